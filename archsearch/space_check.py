"""Does the proxy see every searched dimension? ``archsearch space check``.

For every searched parameter (each stage of a per-stage dimension separately, named as the Optuna
parameter: ``layers``, ``stage0.channels``) and every point tried — the space's base, the base with
a conditional dimension's ``when`` satisfied where it is not, and a few random valid points — the
parameter's values are set one at a time, the architecture is built (the space's own validation and
constraints) and scaled to the proxy (the proxy's own function for the study's proxy settings;
UNet: :func:`snapgen.proxy.proxy_spec`, decoder: :func:`archsearch.objectives.decoder_quality.proxy_decoder_spec`),
and the proxy specs are compared (their dict without ``name``). A parameter is *blind* where two of
its values, both buildable, give the same proxy model: the quality objective cannot tell them
apart, and the search can only prefer the cheaper one. Values that cannot be built at a point are
skipped there, and a dimension that is inactive at a point (its ``when`` is false) is not changed there.

Beside it: the share of uniformly random samples (Optuna's RandomSampler over the space) that are
invalid at full size, and of the valid ones that are invalid at proxy size (as
:meth:`archsearch.study.runner.TrialRunner.check_proxy_size` prunes them), with the top reasons
(numbers replaced by ``#`` to group them), and the proxy model's params and GFLOPs at the base.

Compared: spec fields. A field the built model ignores (``self_attention`` of a stage without
transformer blocks, ``kv_heads`` under ``mqa``) differs in the dict but not in the model; the
space's ``when`` conditions keep most of those inactive, but this check cannot see the rest.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from typing import Any, Mapping

import optuna

from snapgen.errors import UserError

from archsearch.space import SearchSpace

PROXY_CONTEXT_LEN = 8  # tokens of a class prompt through the proxy's text encoder ("a photo of a sneaker")


# ---- the proxy of one architecture ----------------------------------------------------------------
class Proxy:
    """Scales full-size specs of one space kind with one proxy config, as a trial does."""

    def __init__(self, kind: str, cfg):
        self.kind, self.cfg = kind, cfg

    def spec(self, full):
        if self.kind == "decoder":
            from archsearch.objectives.decoder_quality import proxy_decoder_spec

            return proxy_decoder_spec(full, self.cfg, self.cfg.ae.latent_channels, full.out_channels)
        from snapgen.proxy import PROXY_CONTEXT_DIM, proxy_spec

        return proxy_spec(full, self.cfg, latent_channels=self.cfg.ae.latent_channels, context_dim=PROXY_CONTEXT_DIM)

    def key(self, full) -> str:
        return self.spec(full).key()

    def latent_size(self) -> int:
        return self.cfg.ae.resolution // 2 ** (len(self.cfg.ae.block_out_channels) - 1)

    def settings(self) -> dict:
        keys = ("width_mult", "norm_groups") if self.kind == "decoder" else ("width_mult", "depth_mult", "head_dim",
                                                                               "norm_groups")
        return {k: getattr(self.cfg, k) for k in keys}


def proxy_config(kind: str, mapping: Mapping[str, Any], *, file: str | None = None):
    """The validated proxy config of a space kind from a ``proxy:`` mapping."""
    if kind == "decoder":
        from archsearch.objectives.decoder_quality import decoder_proxy_config

        return decoder_proxy_config(mapping, file=file)
    from archsearch.objectives.quality import proxy_config as unet_proxy_config

    return unet_proxy_config(mapping, file=file)


def build(space: SearchSpace, arch: Mapping[str, Any]):
    """The full-size spec of an arch mapping as a trial builds it (:meth:`SearchSpace.check`)."""
    return space.check(arch)


# ---- blind parameters -----------------------------------------------------------------------------
def _activation_points(space: SearchSpace, base: dict) -> dict[str, tuple[str, dict]]:
    """Per conditional dimension inactive at the base: the base with its ``when`` mapping satisfied
    (first allowed value); used for that dimension only (the other fields may not fit it)."""
    out = {}
    for dim in space.dimensions:
        if not isinstance(dim.when, Mapping):
            continue
        if all(space._active(dim, base, stage) for _, stage in space.params_of(dim)):
            continue
        a = copy.deepcopy(base)
        for k, v in dim.when.items():
            a[k] = v[0] if isinstance(v, list) else v
        out[dim.name] = ("base with " + ", ".join(f"{k}={a[k]}" for k in dim.when), a)
    return out


def _random_archs(space: SearchSpace, n: int, seed: int):
    """``n`` uniformly random arch mappings over every listed choice (Optuna's RandomSampler; a study
    offers only the choices that fit, see :mod:`archsearch.space`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        t = study.ask()
        yield space.suggest(t, fit=False)


def _compare(space, proxy, dim, stage, arch, values, rec) -> dict[str, list] | None:
    """The parameter's buildable values at ``arch`` grouped by proxy model; None if fewer than two build."""
    groups: dict[str, list] = {}
    for v in values:
        try:
            full = build(space, space.with_value(arch, dim, stage, v))
        except UserError:
            rec["unbuildable"][f"{v!r} (full size)"] += 1
            continue
        try:
            groups.setdefault(proxy.key(full), []).append(v)
        except UserError:
            rec["unbuildable"][f"{v!r} (proxy size)"] += 1
    return groups if sum(len(g) for g in groups.values()) >= 2 else None


def blind_parameters(space: SearchSpace, proxy: Proxy, *, points: int = 4, seed: int = 0,
                     search: int = 300) -> list[dict]:
    """Each searched parameter varied alone at the base, at ``points`` random valid points and, for a
    conditional dimension inactive at the base, at the base with its condition met; a parameter that
    none of those could test (fewer than two of its values buildable) is tried at up to ``search``
    further random points until one can."""
    base = space.base_dict()
    common: list[tuple[str, dict]] = [("base", base)]
    activation = _activation_points(space, base)
    pool = []  # random points valid at both sizes
    for arch in _random_archs(space, max(search, 50 * max(points, 1)), seed + 1):
        try:
            proxy.spec(build(space, arch))
        except UserError:
            continue
        pool.append(arch)
    common += [(f"random point {i + 1}", a) for i, a in enumerate(pool[:points])]
    out = []
    for dim in space.dimensions:
        for pname, stage in space.params_of(dim):
            values = dim.values(stage, points=5)
            rec = {"parameter": pname, "values": values, "points": 0, "blind_at": [], "inactive_at": 0,
                   "unbuildable": Counter(), "proxy_values": None}
            pts = common + ([activation[dim.name]] if dim.name in activation else [])
            extra = iter([(f"random point {points + i + 1} (searched)", a) for i, a in enumerate(pool[points:])])
            while True:
                for label, arch in pts:
                    if not space._active(dim, arch, stage):
                        rec["inactive_at"] += 1
                        continue
                    groups = _compare(space, proxy, dim, stage, arch, values, rec)
                    if groups is None:
                        continue  # fewer than two buildable values here: nothing to compare
                    rec["points"] += 1
                    collapsed = [g for g in groups.values() if len(g) > 1]
                    if collapsed:
                        rec["blind_at"].append({"point": label, "same_proxy_model": collapsed})
                    if rec["proxy_values"] is None and dim.name in ("channels", "layers", "transformer_depth", "blocks"):
                        rec["proxy_values"] = _proxy_field(space, proxy, arch, dim, stage, values)
                if rec["points"] or len(values) < 2:
                    break
                nxt = next(extra, None)  # not tested yet: look further, one point at a time
                if nxt is None:
                    break
                pts = [nxt]
            rec["blind"] = bool(rec["blind_at"])
            rec["unbuildable"] = dict(rec["unbuildable"])
            out.append(rec)
    return out


def _proxy_field(space, proxy, arch, dim, stage, values) -> dict:
    """What each value of a size field becomes in the proxy (for the report)."""
    out, field = {}, dim.name
    for v in values:
        try:
            p = proxy.spec(build(space, space.with_value(arch, dim, stage, v)))
        except UserError:
            continue
        if proxy.kind == "decoder":
            got = getattr(p, field)
            out[repr(v)] = got[stage] if stage is not None else got
        else:
            ss = p.stages if stage is None else [p.stages[stage]]
            got = [getattr(s, field) for s in ss]
            out[repr(v)] = got[0] if len(set(got)) == 1 else got
    return out


# ---- invalid samples ------------------------------------------------------------------------------
def _reason(e: UserError) -> str:
    text = f"{e.key}: {e.message}" if e.key else e.message
    return re.sub(r"\d+(\.\d+)?", "#", text)


def invalid_shares(space: SearchSpace, proxy: Proxy, *, n: int = 1000, seed: int = 0, top: int = 5) -> dict:
    full, prox = Counter(), Counter()
    example: dict[str, str] = {}
    for arch in _random_archs(space, n, seed):
        try:
            spec = build(space, arch)
        except UserError as e:
            r = _reason(e)
            full[r] += 1
            example.setdefault(r, e.line())
            continue
        try:
            proxy.spec(spec)
        except UserError as e:
            r = _reason(e)
            prox[r] += 1
            example.setdefault(r, e.line())

    def summary(c: Counter, of: int) -> dict:
        k = sum(c.values())
        return {"count": k, "share": k / n if n else float("nan"), "share_of_tested": k / of if of else float("nan"),
                "top": [{"reason": r, "count": m, "example": example[r]} for r, m in c.most_common(top)]}

    n_full = sum(full.values())
    return {"n": n, "seed": seed, "valid": n - n_full - sum(prox.values()),
            "invalid_full_size": summary(full, n), "invalid_proxy_size": summary(prox, n - n_full)}


# ---- the whole check ------------------------------------------------------------------------------
def proxy_cost(space: SearchSpace, proxy: Proxy) -> dict:
    """Params and GFLOPs (fvcore, batch 1) of the proxy model of the space's base."""
    import warnings

    from archsearch.cost import cost_of

    p = proxy.spec(build(space, space.base_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = cost_of(p, proxy.latent_size(), PROXY_CONTEXT_LEN)
    out = {"params": float(rep.params), "gflops": float(rep.gflops), "latent_size": proxy.latent_size()}
    if proxy.kind == "unet":
        out.update(channels=[s.channels for s in p.stages], layers=[s.layers for s in p.stages],
                   transformer_depth=[s.transformer_depth for s in p.stages], head_dim=p.head_dim,
                   context_len=PROXY_CONTEXT_LEN)
    else:
        out.update(channels=list(p.channels), blocks=list(p.blocks))
    return out


def check(space: SearchSpace, proxy: Proxy, *, n: int = 1000, points: int = 4, seed: int = 0,
          cost: bool = True) -> dict:
    params = blind_parameters(space, proxy, points=points, seed=seed)
    rep = {"space": str(space.path), "kind": space.kind, "base": space.base,
           "proxy": proxy.settings(), "parameters": params, "blind": [p["parameter"] for p in params if p["blind"]],
           "untested": [p["parameter"] for p in params if p["points"] == 0 and len(p["values"]) > 1],
           "samples": invalid_shares(space, proxy, n=n, seed=seed)}
    if cost:
        rep["proxy_cost_at_base"] = proxy_cost(space, proxy)
    return rep


def print_check(rep: dict, file=None) -> None:
    proxy = " ".join(f"{k}={v}" for k, v in rep["proxy"].items())
    print(f"space {rep['space']} ({rep['kind']}, base {rep['base']}); proxy {proxy}",
          file=file)
    w = max(len(p["parameter"]) for p in rep["parameters"]) + 2
    wv = max(len(", ".join(map(str, p["values"]))) for p in rep["parameters"]) + 2
    for p in rep["parameters"]:
        vals = ", ".join(map(str, p["values"]))
        if p["blind"]:
            first = p["blind_at"][0]
            groups = "; ".join("/".join(map(str, g)) for g in first["same_proxy_model"])
            status = f"BLIND at {len(p['blind_at'])}/{p['points']} points: {groups} -> one proxy model ({first['point']})"
        elif len(p["values"]) < 2:
            status = "one choice (nothing to compare)"
        elif p["points"] == 0:
            status = "not tested (inactive or one buildable value at every point tried)"
            if p["unbuildable"]:
                status += "; unbuildable: " + ", ".join(f"{v} at {k} point(s)" for v, k in p["unbuildable"].items())
        else:
            status = f"ok at {p['points']} points"
        extra = ""
        if p["proxy_values"]:
            extra = "  [proxy: " + ", ".join(f"{k}->{v}" for k, v in p["proxy_values"].items()) + "]"
        print(f"  {p['parameter']:<{w}}{vals:<{wv}}{status}{extra}", file=file)
    print(f"{len(rep['blind'])} of {len(rep['parameters'])} searched parameters are blind"
          + (f": {', '.join(rep['blind'])}" if rep["blind"] else ""), file=file)
    if rep["untested"]:
        print(f"not tested (no point with two buildable values): {', '.join(rep['untested'])}", file=file)
    s = rep["samples"]
    for key, what in (("invalid_full_size", "invalid at full size"), ("invalid_proxy_size", "valid at full size but "
                                                                                            "invalid at proxy size")):
        d = s[key]
        print(f"random samples (n={s['n']}, seed {s['seed']}): {d['count']} ({100 * d['share']:.1f}%) {what}", file=file)
        for t in d["top"]:
            print(f"    {t['count']:>5}  {t['reason']}", file=file)
    c = rep.get("proxy_cost_at_base")
    if c:
        shape = (f"channels {c['channels']}, layers {c['layers']}, transformer depth {c['transformer_depth']}, "
                 f"head_dim {c['head_dim']}" if rep["kind"] == "unet" else f"channels {c['channels']}, blocks {c['blocks']}")
        print(f"proxy model of the base: {c['params'] / 1e6:.3f}M params, {c['gflops']:.4f} GFLOPs per forward at a "
              f"{c['latent_size']}x{c['latent_size']} latent ({shape})", file=file)


def load_proxy_mapping(study_file: str | None, items: list[str]) -> dict:
    """The proxy mapping: a study's ``proxy:`` (if given), then ``key=value`` items on top."""
    from archsearch.study.schema import apply_overrides

    data: dict = {}
    if study_file:
        from archsearch.study.schema import load_study

        data = copy.deepcopy(dict(load_study(study_file).cfg.proxy))
    for it in items:
        if "=" not in it:
            raise UserError(f"{it!r} must look like key=value (a proxy setting, e.g. width_mult=0.25)",
                            file="<command line>", key="--proxy")
    return apply_overrides(data, items) if items else data
