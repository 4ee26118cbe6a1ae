"""The one config loader: study files, ablations, train configs, proxy configs, specs and decoder specs.

A config is a dataclass (a structured config). A file is read once (:func:`load_yaml`: UTF-8 text,
safe YAML, finite numbers), merged into the dataclass by OmegaConf (unknown keys and wrong types),
command-line overrides are applied by hydra-core's compose API with its override grammar (``key=v``,
``+key=v``, ``~key``; ``key=a,b`` sweeps with ``-m``: :func:`sweep`), and :func:`check` checks what
the fields declare in their metadata (:func:`bounds`, :func:`one_of`): numeric ranges, choices,
finiteness. Every mistake is one :class:`~snapgen.errors.UserError` naming the file (or
``<command line>``), the dotted key and what is allowed.

A ``Dict[str, Any]`` field can declare the dataclass(es) its keys come from (:func:`keys_of`): while
the overrides are applied it holds every field of those (unset ones are ``None``), so ``proxy.steps=5``
works whether or not the file sets it, and what the user set (and nothing else) is what comes out.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from snapgen.errors import UserError

COMMAND_LINE = "<command line>"  # the FILE of an error in a command-line override


# ---- field metadata ---------------------------------------------------------------------------
def bounds(*, ge=None, gt=None, le=None, lt=None, **more) -> dict:
    """Field metadata: the field's numeric range (checked, with every other field's, by :func:`check`)."""
    return {"range": (ge, gt, le, lt), **more}


def one_of(choices: tuple | Callable[[], typing.Iterable[str]], *, what: str = "value", **more) -> dict:
    """Field metadata: the allowed values (a tuple, or a callable such as a block registry's names); ``what``
    names them in the error (``unknown sampler 'x'; allowed: ...``)."""
    return {"choices": choices, "what": what, **more}


def keys_of(classes: Callable[[], tuple], **more) -> dict:
    """Field metadata of a ``Dict[str, Any]``: its keys are fields of these dataclasses (a callable, so
    that heavy modules load late)."""
    return {"keys_of": classes, **more}


def _range_error(v, rng) -> str | None:
    ge, gt, le, lt = rng
    tests = ((">=", ge, lambda b: v >= b), (">", gt, lambda b: v > b), ("<=", le, lambda b: v <= b),
             ("<", lt, lambda b: v < b))
    want = [(op, b, ok) for op, b, ok in tests if b is not None]
    if all(ok(b) for _, b, ok in want):
        return None
    return f"must be {' and '.join(f'{op} {b}' for op, b, _ in want)}, got {v}"


# ---- files ------------------------------------------------------------------------------------
def read_text(path: str | Path) -> str:
    """A config file's text: missing, binary and non-UTF-8 files are one line each."""
    p = Path(path)
    if not p.is_file():
        raise UserError("file not found", file=str(path))
    raw = p.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        raise UserError(f"a binary file (NUL byte at offset {nul}); expected UTF-8 YAML text",
                        file=str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8",
                        file=str(path)) from None


def load_yaml(path: str | Path) -> Any:
    """Safe YAML load of a UTF-8 file with one-line errors; NaN and infinities are refused anywhere."""
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"YAML syntax error: {where}{problem}", file=str(path)) from None
    check_finite(data, file=str(path))
    return data


def check_finite(data: Any, *, file: str | None, key: str = "") -> None:
    """Every number in a nested mapping/list is finite (YAML's .nan / .inf are not a config value)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise UserError(f"must be a finite number, got {data}", file=file, key=key or None)
    if isinstance(data, Mapping):
        for k, v in data.items():
            check_finite(v, file=file, key=f"{key}.{k}" if key else str(k))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            check_finite(v, file=file, key=f"{key}[{i}]")


# ---- structured configs -----------------------------------------------------------------------
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _dataclass_of(t):
    """The dataclass a field holds (directly or in an Optional), else None."""
    if dataclasses.is_dataclass(t):
        return t
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if typing.get_origin(t) is typing.Union and len(args) == 1 and dataclasses.is_dataclass(args[0]) \
        else None


def check(obj, *, file: str | None, prefix: str = ""):
    """What each field declares: finite numbers, its range, its choices; tuples where annotated (OmegaConf
    gives lists). Nested dataclasses too. Returns the (possibly rebuilt) object."""
    hints = _hints(type(obj))
    changes = {}
    for f in dataclasses.fields(obj):
        v, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            nv = check(v, file=file, prefix=f"{key}.")
            if nv is not v:
                changes[f.name] = nv
            continue
        if isinstance(v, (list, tuple)) and v and all(dataclasses.is_dataclass(x) for x in v):
            nv = [check(x, file=file, prefix=f"{key}[{i}].") for i, x in enumerate(v)]
            if any(a is not b for a, b in zip(nv, v)) or isinstance(v, list) and \
                    typing.get_origin(hints[f.name]) is tuple:
                changes[f.name] = type(v)(nv) if typing.get_origin(hints[f.name]) is not tuple else tuple(nv)
            continue
        check_finite(v, file=file, key=key)
        if typing.get_origin(hints[f.name]) is tuple and isinstance(v, list):
            changes[f.name] = v = tuple(v)
        rng = f.metadata.get("range")
        if rng and v is not None and (_range_error(v, rng)):
            raise UserError(_range_error(v, rng), file=file, key=key)
        choices = f.metadata.get("choices")
        if choices is not None and v is not None:
            allowed = tuple(choices() if callable(choices) else choices)
            for i, x in enumerate(v if isinstance(v, (list, tuple)) else [v]):
                if x not in allowed:
                    where = f"{key}[{i}]" if isinstance(v, (list, tuple)) else key
                    raise UserError(f"unknown {f.metadata.get('what', 'value')} {x!r}; allowed: {', '.join(map(str, allowed))}", file=file,
                                    key=where)
    return dataclasses.replace(obj, **changes) if changes else obj


def omegaconf_error(e, *, file: str | None, prefix: str = "") -> UserError:
    """An OmegaConf/Hydra exception as one line: the dotted key, and the allowed keys of an unknown one."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    full = getattr(e, "full_key", None) or ""
    key = f"{prefix}{full}" if full else (prefix.rstrip(".") or None)
    msg = str(e).splitlines()[0]
    cls = getattr(e, "object_type", None)
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and full:
        name = full.rsplit(".", 1)[-1]
        allowed = f"; allowed: {', '.join(f.name for f in dataclasses.fields(cls))}" \
            if dataclasses.is_dataclass(cls) else ""
        msg = f"unknown key {name!r}{allowed}"
    elif "issing mandatory value" in msg:
        msg = "missing required key"
    return UserError(msg, file=file, key=key)


@functools.lru_cache(maxsize=None)
def _schema_node(cls):
    from omegaconf import OmegaConf

    node = OmegaConf.structured(cls)  # merged into (merge copies it), never modified

    def writable(n):  # a frozen dataclass's node is read-only, and merging into it would fail
        OmegaConf.set_readonly(n, False)
        for k in n:
            if not OmegaConf.is_missing(n, k) and OmegaConf.is_dict(n[k]):
                writable(n[k])

    writable(node)
    return node


def structured(cls, data: Mapping[str, Any] | None, *, file: str | None = None, prefix: str = ""):
    """A checked instance of dataclass ``cls`` from a plain mapping (types by OmegaConf, the rest by
    :func:`check`)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if data is None:
        data = {}
    if not isinstance(data, (Mapping, DictConfig)):
        raise UserError(f"must be a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}",
                        file=file, key=prefix.rstrip(".") or None)
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(_schema_node(cls), data))  # a missing required key raises
    except OmegaConfBaseException as e:
        raise omegaconf_error(e, file=file, prefix=prefix) from None
    return check(obj, file=file, prefix=prefix)


# ---- Hydra: composing with overrides, sweeps --------------------------------------------------
@functools.lru_cache(maxsize=None)
def _partial(classes: tuple) -> type:
    """Every field of ``classes`` as Optional with default None (nested dataclasses likewise)."""
    fields, seen = [], set()
    for cls in classes:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            sub = _dataclass_of(hints[f.name])
            if sub is not None:
                t = _partial((sub,))
                fields.append((f.name, t, dataclasses.field(default_factory=t)))
            else:
                fields.append((f.name, Optional[hints[f.name]], dataclasses.field(default=None)))
    return dataclasses.make_dataclass("Keys_" + "_".join(c.__name__ for c in classes), fields)


@functools.lru_cache(maxsize=None)
def _node_type(cls) -> type:
    """``cls`` with each :func:`keys_of` field typed as the partial of its dataclasses (recursively)."""
    hints, fields, changed = _hints(cls), [], False
    for f in dataclasses.fields(cls):
        t, default = hints[f.name], {"default": f.default} if f.default is not dataclasses.MISSING else \
            {"default_factory": f.default_factory}
        if "keys_of" in f.metadata:
            t = _partial(tuple(f.metadata["keys_of"]()))
            default, changed = {"default_factory": t}, True
        elif dataclasses.is_dataclass(t) and _node_type(t) is not t:
            t = _node_type(t)
            default, changed = {"default_factory": t}, True
        elif typing.get_origin(t) is list and dataclasses.is_dataclass(typing.get_args(t)[0]) \
                and _node_type(typing.get_args(t)[0]) is not typing.get_args(t)[0]:
            t, changed = typing.List[_node_type(typing.get_args(t)[0])], True
        fields.append((f.name, t, dataclasses.field(**default)))
    return dataclasses.make_dataclass(cls.__name__, fields) if changed else cls


def _set_only(data: Any) -> Any:
    """A partial's content without its unset (None) fields and empty nested ones."""
    if isinstance(data, dict):
        out = {k: _set_only(v) for k, v in data.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}
    return data


def _prune(cls, data: dict) -> dict:
    hints = _hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        v = out.get(f.name)
        if "keys_of" in f.metadata and isinstance(v, dict):
            out[f.name] = _set_only(v)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(v, dict):
            out[f.name] = _prune(hints[f.name], v)
        elif typing.get_origin(hints[f.name]) is list and dataclasses.is_dataclass(typing.get_args(hints[f.name])[0]) \
                and isinstance(v, list):
            out[f.name] = [_prune(typing.get_args(hints[f.name])[0], x) if isinstance(x, dict) else x for x in v]
    return out


def _parse_error(overrides) -> UserError:
    """The first override Hydra's grammar cannot parse, as one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for line in overrides:
        try:
            OverridesParser.create().parse_overrides([line])
        except HydraException as bad:
            why = [ln for ln in str(bad).splitlines() if ln.strip() and not ln.startswith(("See https://",
                                                                                             "Error parsing"))]
            return UserError(f"cannot parse override {line!r}" + (f": {why[0]}" if why else ""),
                             file=COMMAND_LINE, key=line.split("=", 1)[0].lstrip("+~") or None)
    return UserError(f"cannot parse the overrides {' '.join(overrides)}", file=COMMAND_LINE)


def _override_error(e, overrides, node) -> UserError:
    """A Hydra composition error as one line against the command line, naming the override's key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from hydra.errors import OverrideParseException

    if isinstance(e, OverrideParseException):
        return _parse_error(overrides)
    msg = str(e).splitlines()[0]
    key = None
    for line in overrides:
        if f"'{line}'" in str(e) or f" {line}" in msg or f"'{line.split('=', 1)[0]}'" in msg:
            key = line.split("=", 1)[0].lstrip("+~")
            break
    cause = e.__cause__
    if msg.startswith("Could not override") and key:
        full = str(getattr(cause, "full_key", None) or key)
        parent, _, name = full.rpartition(".")
        sub = OmegaConf.select(node, parent) if parent else node
        known = list(sub.keys()) if OmegaConf.is_dict(sub) else []
        allowed = f"; allowed: {', '.join(map(str, known))}" if known else ""
        hint = f"+{key}=VALUE adds a key" if full == key else f"++{key}=VALUE merges in new keys"
        return UserError(f"unknown key {name!r}{allowed} (Hydra's grammar: {hint})", file=COMMAND_LINE, key=full)
    if isinstance(cause, OmegaConfBaseException):
        return omegaconf_error(cause, file=COMMAND_LINE).with_context(key=key)
    if "To sweep over it" in str(e):
        msg = f"{msg}: a sweep needs -m/--multirun (a list is key=[a,b], a string key='a,b')"
    return UserError(msg, file=COMMAND_LINE, key=key)


def compose(schema, data: Mapping[str, Any], overrides=(), *, file: str | None) -> dict:
    """``data`` (a file's mapping) merged into ``schema`` and the overrides applied by Hydra's compose API;
    returns the plain mapping (interpolations resolved) for :func:`structured`."""
    from hydra import compose as hydra_compose
    from hydra import initialize
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.merge(OmegaConf.structured(_node_type(schema)), data) if schema else OmegaConf.create(data)
    except OmegaConfBaseException as e:
        raise omegaconf_error(e, file=file) from None
    overrides = [str(o) for o in overrides or ()]
    if overrides:
        ConfigStore.instance().store(name="snapgen_config", node=node)
        GlobalHydra.instance().clear()
        try:
            with initialize(version_base=None, config_path=None):
                node = hydra_compose("snapgen_config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise _override_error(e, overrides, node) from None
        finally:
            GlobalHydra.instance().clear()
    try:
        plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        raise omegaconf_error(e, file=file) from None
    return _prune(schema, plain) if schema else plain


def apply(data: Mapping[str, Any], overrides) -> dict:
    """Hydra overrides on a schema-less settings mapping, where ``key=v`` may add a key (Hydra's ``++key=v``)."""
    from omegaconf import OmegaConf

    ovs = [o if str(o).startswith(("+", "~")) else f"++{o}" for o in overrides or ()]
    return compose(None, OmegaConf.create(dict(data)), ovs, file=COMMAND_LINE)


def load(schema, path: str | Path | None, overrides=(), *, what: str = "config"):
    """A file (or None: the defaults) + Hydra overrides -> a checked ``schema`` instance."""
    f = None if path is None else str(path)
    data = {} if path is None else load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UserError(f"a {what} must be a mapping with keys {', '.join(x.name for x in dataclasses.fields(schema))}",
                        file=f)
    return structured(schema, compose(schema, data, overrides, file=f), file=f)


def sweep(overrides) -> list[list[str]]:
    """The jobs of a Hydra multirun: every combination of the sweep overrides (``key=a,b``,
    ``key=range(3)``, ``key=choice(a,b)``), each as a list of plain overrides. Parsed by Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides or ()])
    except HydraException:
        raise _parse_error([str(o) for o in overrides]) from None
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            prefix = o.get_key_element()
            axes.append([f"{prefix}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(job) for job in itertools.product(*axes)]


def swept_keys(overrides) -> set[str]:
    """The keys that sweep overrides (``key=a,b``) set."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(list(overrides))
            if o.is_sweep_override()}


def job_dir(base: str | Path, job: list[str], overrides) -> Path:
    """A multirun job's own directory: ``base/<key=value,...>`` of its swept keys (Hydra's override_dirname);
    ``base`` itself where the sweep sets ``output_dir``."""
    swept = swept_keys(overrides)
    if "output_dir" in swept:
        return Path(base)
    name = ",".join(j.lstrip("+") for j in job if j.split("=", 1)[0].lstrip("+") in swept) or "job"
    return Path(base) / "".join(c if c.isalnum() or c in "=,._-+[]" else "_" for c in name)


__all__ = ["COMMAND_LINE", "bounds", "one_of", "keys_of", "read_text", "load_yaml", "check_finite", "check",
           "structured", "compose", "apply", "load", "sweep", "swept_keys", "job_dir"]
