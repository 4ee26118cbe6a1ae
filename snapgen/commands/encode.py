"""``snapgen encode IMAGEFOLDER --autoencoder PATH_OR_ID --resolution R -o SHARD_DIR``: pre-encode an
ImageFolder into latent shards for the proxy's ``dataset: latents``.

Images stream through the lazy :class:`ImageFolderDataset` and the autoencoder in batches, and the
latents go to disk one shard at a time (:class:`LatentShardWriter`), so an ImageNet-sized folder
needs memory for about one shard. ``meta.json`` is written last: a killed run leaves a directory that
does not load. The shards hold the posterior means, unscaled (the shard format).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from snapgen.errors import DataError, UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("imagefolder", help="ImageFolder root: IMAGEFOLDER/<class_id>/<image>")
    p.add_argument("--autoencoder", required=True, help="diffusers AutoencoderKL: a local path or a hub id")
    p.add_argument("--resolution", type=int, required=True, help="images are centre-cropped and resized to R x R")
    p.add_argument("-o", "--output", required=True, metavar="SHARD_DIR", help="the shard directory to write")
    p.add_argument("--class-map", default=None, metavar="JSON",
                   help="class-name map ({class_id: name} or ImageNet's imagenet_class_index.json) for prompts")
    p.add_argument("--batch-size", type=int, default=64, help="images per autoencoder batch (default 64)")
    p.add_argument("--shard-size", type=int, default=10_000, help="latents per shard file (default 10000)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading images (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing complete shard directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    import torch

    from snapgen.autoencoder import load_autoencoder
    from snapgen.data.imagefolder import ImageFolderDataset
    from snapgen.data.latents import LatentShardWriter
    from snapgen.progress import progress

    for flag in ("resolution", "batch_size", "shard_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"must be >= 1, got {getattr(args, flag)}", key=f"--{flag.replace('_', '-')}")
    if args.workers < 0:
        raise UserError(f"must be >= 0, got {args.workers}", key="--workers")
    out = Path(args.output).expanduser()
    if (out / "meta.json").exists() and not args.overwrite:
        raise UserError("already holds complete latent shards; pass --overwrite to replace them", file=str(out))
    # Everything that can fail on input is loaded before the writer clears an earlier run's files.
    data = ImageFolderDataset(args.imagefolder, args.resolution, args.class_map)
    codec = load_autoencoder(args.autoencoder, resolution=args.resolution)
    codec.vae.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    t0 = time.perf_counter()
    writer = LatentShardWriter(out, shard_size=args.shard_size)
    batches = progress(_batches(loader), total=len(loader), desc="encode", file=sys.stderr, disable=args.no_progress,
                   mininterval=2)
    for images, labels in batches:
        z = codec.encode(images, batch_size=len(images))  # normalised: (mean - shift) * scale
        writer.add(z / codec.scaling_factor + codec.shift_factor, labels)
    writer.finish(data.class_names, scaling_factor=codec.scaling_factor, shift_factor=codec.shift_factor,
                  autoencoder=args.autoencoder, resolution=args.resolution)
    size = f"{codec.latent_channels}x{codec.latent_size}x{codec.latent_size}"
    print(f"{out}: {writer.count} images -> {writer.shards} shards of {size} latents "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _batches(loader):
    """The loader's batches. A worker process's DataError comes back as torch's multi-line report
    ending in the original ``DataError: FILE: message`` line: keep that line (errors are one line)."""
    try:
        yield from loader
    except DataError as e:
        if "\n" not in e.message:
            raise
        raise DataError(e.message.strip().splitlines()[-1].split(": ", 1)[-1]) from None
