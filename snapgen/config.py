"""The one config loader: study files, ablations, train configs, proxy configs, specs and decoder specs.

A config is a dataclass. A file is read once (:func:`load_yaml`: UTF-8 text, safe YAML, finite numbers),
merged into the dataclass by OmegaConf (unknown keys, types), command-line overrides are applied by
hydra-core's compose API and grammar (``key=v``, ``+key=v``, ``~key``; ``key=a,b`` sweeps with ``-m``:
:func:`sweep`), and :func:`check` checks what fields declare (:func:`bounds`, :func:`one_of`). Every
mistake is one :class:`~snapgen.errors.UserError` naming the file (or ``<command line>``), the key and
what is allowed. A ``Dict[str, Any]`` field may name the dataclasses its keys come from (:func:`keys_of`):
overrides then see all their fields (``proxy.steps=5`` whether or not the file sets it), and only what
the user set comes out.
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
def bounds(*, ge=None, gt=None, le=None, lt=None) -> dict:
    """Field metadata: the field's numeric range."""
    return {"range": tuple((op, b) for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None)}


def one_of(choices: tuple | Callable[[], typing.Iterable[str]], *, what: str = "value") -> dict:
    """Field metadata: the allowed values (a tuple, or a callable such as a registry's names); ``what``
    names them in the error (``unknown sampler 'x'; allowed: ...``)."""
    return {"choices": choices, "what": what}


def keys_of(classes: Callable[[], tuple]) -> dict:
    """Field metadata of a ``Dict[str, Any]``: its keys are fields of these dataclasses (a callable: late imports)."""
    return {"keys_of": classes}


_OPS = {">=": lambda v, b: v >= b, ">": lambda v, b: v > b, "<=": lambda v, b: v <= b, "<": lambda v, b: v < b}
_hints = functools.lru_cache(maxsize=None)(typing.get_type_hints)


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
    if type(data) in (int, bool, str, type(None)):
        return
    if isinstance(data, float) and not math.isfinite(data):
        raise UserError(f"must be a finite number, got {data}", file=file, key=key or None)
    if isinstance(data, (dict, Mapping)):
        for k, v in data.items():
            check_finite(v, file=file, key=f"{key}.{k}" if key else str(k))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            check_finite(v, file=file, key=f"{key}[{i}]")


# ---- structured configs -----------------------------------------------------------------------
def _check_field(f, v, *, file, key) -> None:
    check_finite(v, file=file, key=key)
    rng = f.metadata.get("range")
    if rng and v is not None and not all(_OPS[op](v, b) for op, b in rng):
        raise UserError(f"must be {' and '.join(f'{op} {b}' for op, b in rng)}, got {v}", file=file, key=key)
    choices = f.metadata.get("choices")
    if choices is not None and v is not None:
        allowed = tuple(choices() if callable(choices) else choices)
        for i, x in enumerate(v if isinstance(v, (list, tuple)) else [v]):
            if x not in allowed:
                raise UserError(f"unknown {f.metadata['what']} {x!r}; allowed: {', '.join(map(str, allowed))}",
                                file=file, key=f"{key}[{i}]" if isinstance(v, (list, tuple)) else key)


@functools.lru_cache(maxsize=None)
def _fields(cls) -> tuple:
    return tuple((f, typing.get_origin(_hints(cls)[f.name]) is tuple) for f in dataclasses.fields(cls))


def check(obj, *, file: str | None, prefix: str = ""):
    """Each field's declared range and choices, finite numbers, nested dataclasses too; tuples where
    annotated (OmegaConf gives lists). Returns the object (rebuilt where a value changed)."""
    changed = {}
    for f, is_tuple in _fields(type(obj)):
        v0 = v = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            v = check(v, file=file, prefix=f"{key}.")
        elif isinstance(v, (list, tuple)) and v and all(map(dataclasses.is_dataclass, v)):
            v = type(v)(check(x, file=file, prefix=f"{key}[{i}].") for i, x in enumerate(v))
        else:
            _check_field(f, v, file=file, key=key)
        if is_tuple and isinstance(v, list):
            v = tuple(v)
        if v is not v0:
            changed[f.name] = v
    return dataclasses.replace(obj, **changed) if changed else obj


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


def _is(v, t) -> bool:
    if t in (int, float, str, bool):
        return type(v) is t
    args = typing.get_args(t)
    if typing.get_origin(t) is typing.Union:
        return any(_is(v, a) for a in args)
    if t is type(None):
        return v is None
    if typing.get_origin(t) is tuple and type(v) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return all(_is(x, args[0]) for x in v)
    return dataclasses.is_dataclass(t) and type(v) is t


def _exact(cls, data) -> bool:
    """Whether ``cls(**data)`` is what OmegaConf would build: known keys, every required one, exact types."""
    fields, hints = {f.name: f for f in dataclasses.fields(cls)}, _hints(cls)
    return all(k in fields and _is(v, hints[k]) for k, v in data.items()) and all(
        f.name in data for f in fields.values()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


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
    if _exact(cls, data):  # values of exactly the annotated types (code, samplers): OmegaConf would change nothing
        return check(cls(**data), file=file, prefix=prefix)
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(_schema_node(cls), data))  # a missing required key raises
    except OmegaConfBaseException as e:
        raise omegaconf_error(e, file=file, prefix=prefix) from None
    return check(obj, file=file, prefix=prefix)


# ---- Hydra: composing with overrides, sweeps --------------------------------------------------
@functools.lru_cache(maxsize=None)
def _partial(classes: tuple) -> type:
    """Every field of ``classes`` as Optional with default None (nested dataclasses likewise)."""
    fields = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            t = _hints(cls)[f.name]
            if f.name not in fields:
                fields[f.name] = (f.name, _partial((t,)), dataclasses.field(default_factory=_partial((t,)))) \
                    if dataclasses.is_dataclass(t) else (f.name, Optional[t], dataclasses.field(default=None))
    return dataclasses.make_dataclass("Keys_" + "_".join(c.__name__ for c in classes), list(fields.values()))


@functools.lru_cache(maxsize=None)
def _node_type(cls) -> type:
    """``cls`` with each :func:`keys_of` field typed as the partial of its dataclasses."""
    fields = [(f.name, _partial(tuple(f.metadata["keys_of"]())),
               dataclasses.field(default_factory=_partial(tuple(f.metadata["keys_of"]()))))
              if "keys_of" in f.metadata else (f.name, _hints(cls)[f.name], f) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, fields)


def _set_only(data: Any) -> Any:
    """A partial's content without its unset (None) fields and empty nested ones."""
    if not isinstance(data, dict):
        return data
    return {k: v for k, v in ((k, _set_only(v)) for k, v in data.items() if v is not None) if v != {}}


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
    if overrides:  # on the plain mapping (every schema key present): ~key works on any key; types are checked next
        node = OmegaConf.create(OmegaConf.to_container(node))
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
    for f in dataclasses.fields(schema) if schema else ():
        if "keys_of" in f.metadata and isinstance(plain.get(f.name), dict):
            plain[f.name] = _set_only(plain[f.name])
    return plain


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

