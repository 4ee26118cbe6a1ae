"""``latency_ms`` and ``e2e_latency_ms`` of the full-size architecture, from :mod:`archsearch.latency`.

The study's ``latency:`` mapping chooses ``mode: table`` (a calibrated per-block lookup table: a
sum over blocks, well under a second per trial) or ``mode: measure`` (timed on ``backend`` /
``device``). ``e2e_latency_ms`` = ``target.sampling_steps`` x UNet latency + decoder latency; the
other half comes from the target preset (``target.decoder`` for UNet studies, ``target.unet`` for
decoder studies).
"""
from __future__ import annotations

import functools

from snapgen.errors import UserError


class LatencyObjective:
    def __init__(self, cfg, target):
        try:
            from archsearch.latency import LatencyModel
        except ImportError as e:
            raise UserError(f"latency objectives need archsearch.latency ({e})", key="latency") from None
        self.cfg, self.target = cfg, target
        kw = dict(mode=cfg.mode, backend=cfg.backend, device=cfg.device)
        if cfg.mode == "table":
            kw["path"] = cfg.path
        self.model = _make_model(LatencyModel, kw)

    def predict(self, spec) -> float:
        return float(self.model.predict(spec, self.target.latent_size))

    @functools.cached_property
    def _partner(self):
        from snapgen.presets import DEFAULT_DECODER_SPACE, DEFAULT_UNET_SPACE, load_decoder_preset, load_preset

        return {"unet": lambda: load_decoder_preset(DEFAULT_DECODER_SPACE, self.target.decoder),
                "decoder": lambda: load_preset(DEFAULT_UNET_SPACE, self.target.unet)}

    @functools.lru_cache(maxsize=2)
    def partner_ms(self, kind: str) -> float:
        return self.predict(self._partner[kind]())

    def metrics(self, spec, kind: str, needed) -> dict:
        ms = self.predict(spec)
        out = {"latency_ms": ms}
        if "e2e_latency_ms" in needed:
            other = self.partner_ms(kind)
            unet_ms, dec_ms = (ms, other) if kind == "unet" else (other, ms)
            out["e2e_latency_ms"] = self.target.sampling_steps * unet_ms + dec_ms
        return out


def _make_model(cls, kw):
    import inspect

    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kw = {k: v for k, v in kw.items() if k in params}
    return cls(**kw)
