"""Search spaces: YAML -> Optuna distributions -> ArchSpec / DecoderSpec.

A space file has ``kind`` (unet | decoder), ``presets`` (see :mod:`snapgen.presets`) and ``search``:

.. code-block:: yaml

    search:
      base: f                      # fields that are not searched come from this preset
      dimensions:
        conv: {choices: [regular, separable, expanded_separable]}
        conv_expansion: {choices: [1.5, 2, 3], when: {conv: expanded_separable}}
        transformer_depth: {per_stage: true, choices: [[0, 1], [0, 2], [2, 4, 6]]}
        attention: {per_stage: true, choices: [mhsa, mqa, gqa], when: has_attention}
        kv_heads: {per_stage: true, choices: [2, 4], when: {attention: gqa}}
        ffn_ratio: {low: 2, high: 4, step: 1}
      constraints: [channels_non_decreasing]

Dimensions are sampled in file order; ``when`` is either a derived fact (``has_attention``,
``has_self_attention``, per stage for per-stage dimensions) or a mapping ``field: value(s)``
checked against what was sampled so far. Each dimension becomes one Optuna parameter, or one
per stage (``stage{i}.{field}``) for per-stage dimensions.

The space is conditional: a choice is offered only where the sample so far can take it and still be
built, at full size and (in a study) at proxy size, within the constraints. Fields not sampled yet keep
their base values, except those depending on the choice (the same per-stage field's later stages,
fields whose ``when`` names it): one of their values must fit. So ``gqa`` comes only where a
``kv_heads`` choice divides the heads at both sizes. Fewer fitting choices than listed: the parameter
is named with them (``attention|mhsa/mqa``; Optuna wants one distribution per name); one: it is set.
None (a user-written space): all are offered, and an unbuildable sample is :class:`InvalidArchitecture`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from snapgen.blocks.registry import FIELD_REGISTRY
from snapgen.decoder import DecoderSpec
from snapgen.errors import UserError
from snapgen.presets import load_space_file, resolve_preset_dict
from snapgen.spec import STAGE_FIELDS, ArchSpec

KINDS = ("unet", "decoder")
DIM_KEYS = {"choices", "low", "high", "step", "log", "per_stage", "when"}
UNET_FACTS = ("has_attention", "has_self_attention", "has_cross_attention")
DECODER_STAGE_FIELDS = ("channels", "blocks", "norm")


class InvalidArchitecture(UserError):
    """A sampled architecture that cannot be built (the trial is pruned with this reason)."""


def _suggest(trial, name: str, dist) -> Any:
    """Public Optuna suggest_* calls (work for Trial and FixedTrial alike)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _stage_facts(arch: Mapping[str, Any], i: int) -> dict[str, bool]:
    def at(name, default):
        v = arch.get(name, default)
        return v[i] if isinstance(v, (list, tuple)) else v

    depth = at("transformer_depth", 0)
    sa, ca = at("self_attention", True), at("cross_attention", True)
    return {"has_attention": depth > 0 and (sa or ca), "has_self_attention": depth > 0 and sa,
            "has_cross_attention": depth > 0 and ca}


@dataclass(frozen=True)
class Dimension:
    name: str
    choices: tuple | None = None  # per stage: tuple of tuples
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    per_stage: bool = False
    when: Any = None

    def distribution(self, stage: int | None = None):
        if self.choices is not None:
            ch = self.choices[stage] if (stage is not None and isinstance(self.choices[0], tuple)) else self.choices
            return CategoricalDistribution(list(ch))
        if all(isinstance(v, int) for v in (self.low, self.high)) and (self.step is None or isinstance(self.step, int)):
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), step=self.step, log=self.log)

    def values(self, stage: int | None = None, points: int = 0) -> list | None:
        """Every value (at ``stage``): the choices, an int range, a float range by its step; a
        continuous range: ``points`` evenly spaced values, or None without ``points``."""
        dist = self.distribution(stage)
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
        if isinstance(dist, IntDistribution):
            return list(range(dist.low, dist.high + 1, dist.step))
        if dist.step is not None:
            return [dist.low + j * dist.step for j in range(int(round((dist.high - dist.low) / dist.step)) + 1)]
        return [dist.low + (dist.high - dist.low) * j / (points - 1) for j in range(points)] if points else None


CONSTRAINTS: dict[str, Callable[[Any], str | None]] = {}


def constraint(name: str):
    def deco(fn):
        CONSTRAINTS[name] = fn
        return fn

    return deco


@constraint("channels_non_decreasing")
def _channels_non_decreasing(spec) -> str | None:
    if isinstance(spec, ArchSpec):
        ch = [s.channels for s in spec.stages]
        if any(b < a for a, b in zip(ch, ch[1:])):
            return f"channels {ch} decrease with depth"
    return None


@constraint("decoder_channels_non_increasing")
def _decoder_channels(spec) -> str | None:
    if isinstance(spec, DecoderSpec):
        ch = list(spec.channels)
        if any(b > a for a, b in zip(ch, ch[1:])):
            return f"decoder channels {ch} grow with resolution"
    return None


def at_proxy_size(spec, proxy: Callable | None):
    """``proxy(spec)`` (None: nothing to check); InvalidArchitecture with the reason where it cannot be built."""
    try:
        return proxy(spec) if proxy is not None else True
    except UserError as e:
        raise InvalidArchitecture(f"at proxy size: {e.message}", key=e.key) from None


@dataclass
class SearchSpace:
    path: Path
    kind: str
    presets: dict[str, Any]
    base: str
    dimensions: list[Dimension] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        path = Path(path)
        f = str(path)
        data = load_space_file(path)
        bad = sorted(set(data) - {"kind", "presets", "search"})
        if bad:
            raise UserError(f"unknown key {bad[0]!r}; allowed: kind, presets, search", file=f, key=bad[0])
        kind = data.get("kind", "unet")
        if kind not in KINDS:
            raise UserError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}", file=f, key="kind")
        presets = data.get("presets") or {}
        if not isinstance(presets, Mapping) or not presets:
            raise UserError("must be a non-empty mapping of named presets", file=f, key="presets")
        search = data.get("search") or {}
        if not isinstance(search, Mapping):
            raise UserError("must be a mapping with keys base, dimensions, constraints", file=f, key="search")
        bad = sorted(set(search) - {"base", "dimensions", "constraints"})
        if bad:
            raise UserError(f"unknown key {bad[0]!r}; allowed: base, dimensions, constraints", file=f,
                            key=f"search.{bad[0]}")
        base = search.get("base", next(iter(presets)))
        space = cls(path=path, kind=kind, presets=dict(presets), base=base)
        space.preset(base)  # validates the base (and that it exists)
        allowed_fields = set(STAGE_FIELDS) | {"head_dim", "sampling_conv", "io_conv", "norm_groups", "mid_block",
                                              "latent_channels", "context_dim"}
        if kind == "decoder":
            allowed_fields = {f for f in DecoderSpec.__dataclass_fields__} - {"name"}
        dims = search.get("dimensions") or {}
        if not isinstance(dims, Mapping):
            raise UserError("must be a mapping of field -> distribution", file=f, key="search.dimensions")
        for name, d in dims.items():
            key = f"search.dimensions.{name}"
            if name not in allowed_fields:
                raise UserError(f"unknown field {name!r}; allowed: {', '.join(sorted(allowed_fields))}", file=f, key=key)
            if not isinstance(d, Mapping):
                raise UserError("must be a mapping with choices or low/high", file=f, key=key)
            bad = sorted(set(d) - DIM_KEYS)
            if bad:
                raise UserError(f"unknown key {bad[0]!r}; allowed: {', '.join(sorted(DIM_KEYS))}", file=f,
                                key=f"{key}.{bad[0]}")
            space.dimensions.append(space._parse_dim(name, d, key))
        cons = search.get("constraints") or []
        for i, c in enumerate(cons):
            if c not in CONSTRAINTS:
                raise UserError(f"unknown constraint {c!r}; allowed: {', '.join(CONSTRAINTS)}", file=f,
                                key=f"search.constraints[{i}]")
        space.constraints = list(cons)
        return space

    def _parse_dim(self, name: str, d: Mapping[str, Any], key: str) -> Dimension:
        f = str(self.path)
        per_stage = bool(d.get("per_stage", False))
        if ("choices" in d) == ("low" in d or "high" in d):
            raise UserError("give either 'choices' or 'low' and 'high'", file=f, key=key)
        choices = None
        if "choices" in d:
            ch = d["choices"]
            if not isinstance(ch, list) or not ch:
                raise UserError("'choices' must be a non-empty list", file=f, key=f"{key}.choices")
            if per_stage and isinstance(ch[0], list):
                n = self.num_stages
                if len(ch) != n:
                    raise UserError(f"has {len(ch)} per-stage choice lists for {n} stages", file=f, key=f"{key}.choices")
                if not all(isinstance(c, list) and c for c in ch):
                    raise UserError("per-stage choices must all be non-empty lists", file=f, key=f"{key}.choices")
                choices = tuple(tuple(c) for c in ch)
            else:
                choices = tuple(ch)
            flat = [x for c in (choices if isinstance(choices[0], tuple) else [choices]) for x in c]
            if not all(x is None or isinstance(x, (bool, int, float, str)) for x in flat):
                raise UserError("choices must be scalars (bool, int, float, str)", file=f, key=f"{key}.choices")
            if name in FIELD_REGISTRY:  # a registered block name: the registry says what is allowed
                for x in flat:
                    FIELD_REGISTRY[name].check(x, file=f, key=f"{key}.choices")
        else:
            if "low" not in d or "high" not in d:
                raise UserError("a range needs both 'low' and 'high'", file=f, key=key)
            if not all(isinstance(d[k], (int, float)) and not isinstance(d[k], bool) for k in ("low", "high")):
                raise UserError("'low' and 'high' must be numbers", file=f, key=key)
            if d["low"] > d["high"]:
                raise UserError(f"low={d['low']} > high={d['high']}", file=f, key=key)
        when = d.get("when")
        if when is not None:
            if isinstance(when, str):
                if when not in UNET_FACTS:
                    raise UserError(f"unknown condition {when!r}; allowed: {', '.join(UNET_FACTS)} or a mapping",
                                    file=f, key=f"{key}.when")
            elif not isinstance(when, Mapping):
                raise UserError("must be a fact name or a mapping field: value(s)", file=f, key=f"{key}.when")
            else:
                fields = DecoderSpec.__dataclass_fields__ if self.kind == "decoder" else \
                    set(STAGE_FIELDS) | set(ArchSpec.__dataclass_fields__) - {"stages"}
                for k in when:
                    if k not in fields:
                        raise UserError(f"unknown field {k!r}; allowed: {', '.join(sorted(fields))}", file=f,
                                        key=f"{key}.when.{k}")
        return Dimension(name=name, choices=choices, low=d.get("low"), high=d.get("high"), step=d.get("step"),
                         log=bool(d.get("log", False)), per_stage=per_stage, when=when)

    # ---- presets ---------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        ch = self.base_dict().get("channels")
        return len(ch) if isinstance(ch, (list, tuple)) else 1

    def base_dict(self) -> dict[str, Any]:
        return resolve_preset_dict(self.presets, self.base, file=str(self.path))

    def preset(self, name: str):
        arch = resolve_preset_dict(self.presets, name, file=str(self.path))
        return self.build(arch, key=f"presets.{name}")

    def build(self, arch: Mapping[str, Any], key: str | None = None):
        """ArchSpec (unet) or DecoderSpec (decoder) from a merged arch mapping."""
        f = str(self.path)
        try:
            if self.kind == "decoder":
                if "autoencoder_kl" in self.presets.get(arch.get("name", ""), {}):
                    from snapgen.presets import load_decoder_preset

                    return load_decoder_preset(self.path, arch["name"])
                return DecoderSpec.from_dict(arch, file=f)
            return ArchSpec.from_dict(arch, file=f)
        except UserError as e:
            if key is None:
                raise
            raise UserError(e.message, file=f, key=f"{key}.{e.key}" if e.key else key) from None

    # ---- sampling --------------------------------------------------------------------------
    def _active(self, dim: Dimension, arch: Mapping[str, Any], stage: int | None) -> bool:
        w = dim.when
        if w is None:
            return True
        if isinstance(w, str):
            if stage is not None:
                return _stage_facts(arch, stage)[w]
            return any(_stage_facts(arch, i)[w] for i in range(self.num_stages))
        for k, v in w.items():
            cur = arch.get(k)
            if isinstance(cur, (list, tuple)) and k in (STAGE_FIELDS + DECODER_STAGE_FIELDS):
                cur = cur[stage] if stage is not None else cur
            allowed = v if isinstance(v, list) else [v]
            if isinstance(cur, (list, tuple)):
                if not any(c in allowed for c in cur):
                    return False
            elif cur not in allowed:
                return False
        return True

    def params_of(self, dim: Dimension) -> list[tuple[str, int | None]]:
        if dim.per_stage:
            return [(f"stage{i}.{dim.name}", i) for i in range(self.num_stages)]
        return [(dim.name, None)]

    def with_value(self, arch: Mapping[str, Any], dim: Dimension, stage: int | None, value) -> dict[str, Any]:
        a = dict(arch)
        if stage is None:
            a[dim.name] = value
        else:
            cur = a.get(dim.name)
            a[dim.name] = list(cur) if isinstance(cur, (list, tuple)) else [cur] * self.num_stages
            a[dim.name][stage] = value
        return a

    def check(self, arch: Mapping[str, Any], proxy: Callable | None = None):
        """The spec of a merged arch mapping, built and checked against the constraints and (given
        ``proxy``, a function full spec -> proxy spec) at proxy size; InvalidArchitecture otherwise."""
        try:
            spec = self.build(arch)
        except UserError as e:
            raise InvalidArchitecture(e.message, key=e.key) from None
        for c in self.constraints:
            reason = CONSTRAINTS[c](spec)
            if reason:
                raise InvalidArchitecture(f"violates {c}: {reason}", key="search.constraints")
        return at_proxy_size(spec, proxy) and spec

    def _dependents(self, k: int, dim: Dimension, stage: int | None) -> list[tuple[Dimension, int | None]]:
        """The not-yet-sampled parameters whose values depend on parameter (dim, stage), dimension k."""
        out = [(dim, i) for _, i in self.params_of(dim) if stage is not None and i > stage]
        for d in self.dimensions[k + 1:]:
            if isinstance(d.when, Mapping) and dim.name in d.when:
                out += [(d, i) for _, i in self.params_of(d) if stage is None or i is None or i == stage]
        return out

    def _fits(self, arch: dict, deps: list, proxy, seen: dict) -> bool:
        if not deps:
            key = repr(sorted(arch.items()))
            if key not in seen:
                try:
                    self.check(arch, proxy)
                    seen[key] = True
                except InvalidArchitecture:
                    seen[key] = False
            return seen[key]
        (d, i), rest = deps[0], deps[1:]
        if not self._active(d, arch, i) or not isinstance(d.distribution(i), CategoricalDistribution):
            return self._fits(arch, rest, proxy, seen)
        return any(self._fits(self.with_value(arch, d, i, v), rest, proxy, seen) for v in d.distribution(i).choices)

    def suggest(self, trial: optuna.Trial | optuna.trial.FixedTrial, proxy: Callable | None = None,
                fit: bool = True) -> dict[str, Any]:
        """Sample every active dimension, offering only the choices that fit (see the module doc; with
        ``fit=False`` every choice, as ``archsearch space check`` measures the space itself);
        return the merged arch mapping (not yet validated)."""
        arch = self.base_dict()
        arch["name"] = f"{self.base}-trial{getattr(trial, 'number', 0)}"
        seen: dict[str, bool] = {}
        for k, dim in enumerate(self.dimensions):
            for pname, i in self.params_of(dim):
                if not self._active(dim, arch, i):
                    continue
                dist = dim.distribution(i)
                if fit and isinstance(dist, CategoricalDistribution):
                    deps = self._dependents(k, dim, i)
                    ok = [v for v in dist.choices if self._fits(self.with_value(arch, dim, i, v), deps, proxy, seen)]
                    ok = ok or list(dist.choices)  # nothing fits: the build will say why
                    if len(ok) == 1:
                        arch = self.with_value(arch, dim, i, ok[0])
                        continue
                    if len(ok) < len(dist.choices):
                        pname, dist = f"{pname}|{'/'.join(map(str, ok))}", CategoricalDistribution(ok)
                arch = self.with_value(arch, dim, i, _suggest(trial, pname, dist))
        return arch

    def sample(self, trial, proxy: Callable | None = None) -> Any:
        """The spec a trial samples (``proxy``: see :meth:`check`); :class:`InvalidArchitecture` (with
        its reason) if it can't be built."""
        return self.check(self.suggest(trial, proxy), proxy)

    def sample_random(self, n: int, seed: int = 0, max_tries: int = 1000) -> list[Any]:
        """``n`` distinct valid architectures drawn at random (for held-out validation sets)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        out, seen = [], set()
        for _ in range(max_tries):
            t = study.ask()
            try:
                spec = self.sample(t)
            except InvalidArchitecture:
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                continue
            study.tell(t, 0.0)
            key = spec.key()
            if key not in seen:
                seen.add(key)
                out.append(spec)
            if len(out) == n:
                break
        return out

    def grid(self) -> dict[str, list[Any]]:
        """Search space for Optuna's GridSampler (ranges expanded by their step)."""
        out: dict[str, list[Any]] = {}
        for dim in self.dimensions:
            for pname, i in self.params_of(dim):
                out[pname] = dim.values(i)
                if out[pname] is None:
                    raise UserError("a grid needs a 'step' on every float range", file=str(self.path),
                                    key=f"search.dimensions.{dim.name}")
        return out
