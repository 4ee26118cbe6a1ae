"""Where a run executes: the DDP process group (torchrun) and the run directory's logs."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from snapgen.cache import atomic_write_json
from snapgen.train.device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            x = x.to(self.device)
            dist.all_reduce(x)
        return x

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "auto", *, nested: bool = False) -> Dist:
    """torchrun sets WORLD_SIZE/RANK: join (or create) the process group; gloo on CPU, nccl on CUDA.
    ``nested`` runs (the embedded teacher built inside another run) stay single-process."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if nested or world <= 1:
        return Dist(0, 1, dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return Dist(dist.get_rank(), dist.get_world_size(), dev, owns)


class RunLog:
    """stats.jsonl (one JSON object per logged step; truncated to the resumed step on resume) and
    TensorBoard when installed. Only the main rank writes."""

    def __init__(self, out: Path, *, enabled: bool, start: int):
        self.enabled = enabled
        self.path = out / "stats.jsonl"
        self.tb = None
        if enabled:
            out.mkdir(parents=True, exist_ok=True)
            rows = []
            if self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a kill
                    if r.get("step", 0) <= start:
                        rows.append(line)
            self.path.write_text("".join(r + "\n" for r in rows))
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)
            except Exception:  # tensorboard not installed
                self.tb = None
        self.t0 = time.perf_counter()

    def write(self, row: dict):
        if not self.enabled:
            return
        row = {"step": row["step"], **{k: v for k, v in row.items() if k != "step"},
               "wall_s": round(time.perf_counter() - self.t0, 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def write_json(path: Path, obj) -> None:
    atomic_write_json(path, obj)
