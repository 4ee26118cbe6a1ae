"""What the proxy benches share: the proxy-sized model of a preset and the data it trains on.

``--data proxy`` (default): the default proxy assets (Fashion-MNIST latents, MiniLM class prompts;
warm caches: run ``snapgen proxy`` once). ``--data synthetic``: random latents and prompt embeddings
of the same shapes (8x8x4 latents, 11 prompts of 9 tokens x 384), for machines without the data set
or the text encoder (a lent GPU); throughput does not depend on the values, and the bench says
which data it used.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch


@dataclass
class SyntheticAssets:
    """The two things :func:`snapgen.proxy.flow_engine` reads from the assets."""

    latents: torch.Tensor
    labels: torch.Tensor
    context: torch.Tensor
    pooled: torch.Tensor
    class_names: tuple

    def on(self, device):
        return replace(self, latents=self.latents.to(device), labels=self.labels.to(device),
                       context=self.context.to(device), pooled=self.pooled.to(device))


def synthetic_assets(n: int = 8192, classes: int = 10, tokens: int = 9, width: int = 384) -> SyntheticAssets:
    g = torch.Generator().manual_seed(0)
    return SyntheticAssets(torch.randn(n, 4, 8, 8, generator=g), torch.arange(n) % classes,
                           torch.randn(classes + 1, tokens, width, generator=g),
                           torch.randn(classes + 1, width, generator=g), tuple(f"c{i}" for i in range(classes)))


def add_arguments(ap) -> None:
    ap.add_argument("--preset", default="a")
    ap.add_argument("--steps", type=int, default=40, help="training steps per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", help="auto, fp32, bf16, fp16 (the bare loop: fp32 only)")
    ap.add_argument("--data", choices=("proxy", "synthetic"), default="proxy")


def setup(args):
    """(config, assets, proxy spec, device) of the bench run."""
    from snapgen.presets import load_preset
    from snapgen.proxy import ProxyConfig, prepare_assets, proxy_spec
    from snapgen.train.device import resolve_device

    torch.set_num_threads(args.threads)
    cfg = replace(ProxyConfig(), steps=args.steps, threads=args.threads, device=args.device,
                  precision=args.precision, progress=False).validate()
    assets = prepare_assets(cfg) if args.data == "proxy" else synthetic_assets()
    spec = proxy_spec(load_preset(None, args.preset), cfg, latent_channels=assets.latents.shape[1],
                      context_dim=assets.context.shape[-1])
    return cfg, assets, spec, resolve_device(cfg.device)


def engine(cfg, assets, spec, device, seed: int = 0):
    """The proxy's training engine for ``spec`` (as :func:`snapgen.proxy.run_proxy` builds it, no evaluation)."""
    from snapgen.proxy import flow_engine
    from snapgen.train.models import Student
    from snapgen.train.objectives import FlowMatching
    from snapgen.unet import SnapGenUNet

    torch.manual_seed(seed)
    net = SnapGenUNet.from_spec(spec).to(device)
    return flow_engine(Student(net), assets, cfg, seed=seed, device=device, objective=FlowMatching(), ema_of=net)


def engine_rate(cfg, assets, spec, device, seed: int = 0):
    """(images/s of wall time, images/s of this thread's CPU time, the engine) of the proxy's training
    run: the engine as :func:`snapgen.proxy.run_proxy` builds it, evaluation excluded. CPU time counts
    only while this thread runs, so on a shared machine it is less disturbed by the other jobs (on
    a GPU it means nothing: use the wall-time rate)."""
    e = engine(cfg, assets, spec, device, seed)
    c0 = time.thread_time()
    e.run()
    images = e.step * cfg.batch_size
    return images / e.train_seconds, images / (time.thread_time() - c0), e


def paired(ours: list[float], theirs: list[float]) -> float:
    """The median of the per-round ratios (each round runs both back to back)."""
    return statistics.median(a / b for a, b in zip(ours, theirs))
