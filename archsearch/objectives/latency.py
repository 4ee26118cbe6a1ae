"""``latency_ms`` and ``e2e_latency_ms`` of the full-size architecture, from :mod:`archsearch.latency`.

The study's ``latency:`` mapping chooses ``mode: table`` (a calibrated per-block lookup table made
by ``archsearch calibrate``: a sum over blocks, well under a second per trial) or ``mode: measure``
(the model is built and timed on ``backend`` / ``device``). ``e2e_latency_ms`` =
``target.sampling_steps`` x UNet latency + decoder latency; the other network is the target preset
(``target.decoder`` for UNet studies, ``target.unet`` for decoder studies), predicted from
``latency.partner_path`` (a table of the other space) or else measured once per process.
"""
from __future__ import annotations

import functools


def latency_model(cfg, target, space=None, path=None):
    from archsearch.latency import LatencyModel

    path = path or cfg.path
    setting = {"backend": cfg.backend, "device": cfg.device, "threads": cfg.threads, "clock": cfg.clock,
               "latent_size": target.latent_size}
    if cfg.mode == "table" and path:  # a table calibrated at another setting: refused unless allow_mismatch
        return LatencyModel.from_table(path, space, setting, allow_mismatch=cfg.allow_mismatch)
    return LatencyModel.measuring(backend=cfg.backend, device=cfg.device, threads=cfg.threads,
                                  clock=cfg.clock or "wall", context_len=target.context_len)


class LatencyObjective:
    def __init__(self, cfg, target, space=None):
        self.cfg, self.target, self.space = cfg, target, space
        self.model = latency_model(cfg, target, space)

    def predict(self, spec) -> float:
        return float(self.model.predict(spec, self.target.latent_size))

    @functools.lru_cache(maxsize=2)
    def partner_ms(self, kind: str) -> float:
        from snapgen.presets import DEFAULT_DECODER_SPACE, DEFAULT_UNET_SPACE, load_decoder_preset, load_preset

        spec = (load_decoder_preset(DEFAULT_DECODER_SPACE, self.target.decoder) if kind == "unet"
                else load_preset(DEFAULT_UNET_SPACE, self.target.unet))
        if self.cfg.partner_path:
            m = latency_model(self.cfg, self.target, None, path=self.cfg.partner_path)
        else:
            m = latency_model(type(self.cfg)(mode="measure", backend=self.cfg.backend, device=self.cfg.device,
                                             threads=self.cfg.threads, clock=self.cfg.clock), self.target)
        return float(m.predict(spec, self.target.latent_size))

    def metrics(self, spec, kind: str, needed) -> dict:
        ms = self.predict(spec)
        out = {"latency_ms": ms}
        v = self.model.table.validation if self.model.table else None
        if v:  # how far to trust the number: the table's own held-out validation
            out.update(latency_table_error_pct=v["median_abs_pct_error"], latency_table_bias_pct=v["bias_pct"],
                       latency_table_within10_pct=v["within_10_pct"])
        if "e2e_latency_ms" in needed:
            other = self.partner_ms(kind)
            unet_ms, dec_ms = (ms, other) if kind == "unet" else (other, ms)
            out["e2e_latency_ms"] = self.target.sampling_steps * unet_ms + dec_ms
        return out


def check_table(cfg, target, space, *, file: str) -> None:
    """A table must fit the space and the target resolution: checked when the study loads."""
    from snapgen.errors import UserError

    for key, path in (("latency.path", cfg.path), ("latency.partner_path", cfg.partner_path)):
        if not path:
            continue
        try:  # the space, and the setting (target latent, backend, device, threads, clock)
            latency_model(cfg, target, space if key == "latency.path" else None, path=path)
        except UserError as e:
            raise UserError(f"{e.line()}", file=file, key=key) from None
