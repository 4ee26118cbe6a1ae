"""``snapgen export``: Core ML packages (.mlpackage) of a UNet and its decoder, from a preset or a
``save_pretrained`` checkpoint directory; or (``--format diffusers``) a trained run as a diffusers
pipeline directory (:mod:`snapgen.export.diffusers`)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from snapgen.errors import UserError

FORMATS = ("coreml", "diffusers")


def add_arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="UNet preset name (random weights: for deployment plumbing and latency)")
    src.add_argument("--checkpoint", help="coreml: a SnapGenUNet save_pretrained directory (config.json + weights; "
                                          "the UNet may sit in a 'unet' subfolder), with an optional 'decoder' "
                                          "subfolder; diffusers: a `snapgen train` output_dir")
    p.add_argument("--space", help="UNet search-space YAML holding --preset (default: search_spaces/unet.yaml)")
    p.add_argument("--decoder", default="tiny", help="decoder preset of search_spaces/decoder.yaml for --preset "
                                                     "(default tiny), or 'none'")
    p.add_argument("--decoder-space", help="decoder search-space YAML (default: search_spaces/decoder.yaml)")
    p.add_argument("--format", default="coreml", help="export format: coreml (default) | diffusers (a pipeline "
                                                    "directory for DiffusionPipeline.from_pretrained)")
    p.add_argument("--decoder-run", help="diffusers: the VAE is this `snapgen train stage=decoder` run's tiny decoder "
                                         "(default: the run's autoencoder)")
    p.add_argument("-o", "--out", required=True, help="output directory (unet.mlpackage, decoder.mlpackage; or the "
                                                      "pipeline)")
    p.add_argument("--latent-size", type=int, default=128, help="latent height/width baked in (default 128)")
    p.add_argument("--context-len", type=int, default=77, help="text tokens baked in (default 77)")
    p.add_argument("--attention", default="split_einsum",
                   help="attention layout: split_einsum ((B,C,1,L), per-head einsums, for the Neural Engine; "
                        "default) or original (as trained)")
    p.add_argument("--precision", default="float16", help="compute precision: float16 (default) | float32")
    p.add_argument("--palettize", type=int, metavar="BITS", help="k-means weight palettization to BITS bits "
                                                                  "(coremltools.optimize), e.g. 4 or 6")
    p.add_argument("--target", default="iOS17", help="minimum deployment target: iOS16 | iOS17 (default) | iOS18")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _load_checkpoint(path: str):
    """(unet, decoder or None) from a save_pretrained directory."""
    from snapgen.decoder import TinyDecoder
    from snapgen.unet import SnapGenUNet

    root = Path(path)
    if not root.is_dir():
        raise UserError("checkpoint directory not found", file=path)
    unet_dir = root if (root / "config.json").is_file() else root / "unet"
    if not (unet_dir / "config.json").is_file():
        raise UserError("no config.json here or in a 'unet' subfolder: not a SnapGenUNet save_pretrained directory",
                        file=path)
    try:
        unet = SnapGenUNet.from_pretrained(str(unet_dir), low_cpu_mem_usage=False)
    except UserError:
        raise
    except Exception as e:  # diffusers raises plain errors for bad weights/configs
        raise UserError(f"cannot load the UNet: {str(e).splitlines()[0]}", file=str(unet_dir)) from None
    decoder = None
    dec_dir = root / "decoder"
    if (dec_dir / "config.json").is_file():
        try:
            decoder = TinyDecoder.from_pretrained(str(dec_dir))
        except Exception as e:
            raise UserError(f"cannot load the decoder: {str(e).splitlines()[0]}", file=str(dec_dir)) from None
    return unet.eval(), (decoder.eval() if decoder is not None else None)


def _check_latents(spec, decoder_latent_channels: int, dec_name: str) -> None:
    if decoder_latent_channels != spec.latent_channels:
        raise UserError(f"decoder {dec_name!r} decodes {decoder_latent_channels}-channel latents but UNet {spec.name!r} "
                        f"makes {spec.latent_channels}: pick a matching --decoder (sdxl: 4, sd3/tiny: 16) or 'none'",
                        key="--decoder")


def run(args):
    from snapgen.decoder import build_decoder
    from snapgen.presets import load_decoder_preset, load_preset
    from snapgen.unet import SnapGenUNet

    if args.format not in FORMATS:
        raise UserError(f"unknown format {args.format!r}; allowed: {', '.join(FORMATS)}", key="--format")
    if args.format == "diffusers":
        return _run_diffusers(args)
    if args.decoder_run:
        raise UserError("--decoder-run goes with --format diffusers", key="--decoder-run")
    if args.latent_size <= 0 or args.context_len <= 0:
        raise UserError("--latent-size and --context-len must be positive", key="--latent-size")
    from snapgen.export.coreml import ATTENTION_LAYOUTS, export_decoder, export_unet, io_shapes

    if args.attention not in ATTENTION_LAYOUTS:
        raise UserError(f"unknown attention layout {args.attention!r}; allowed: {', '.join(ATTENTION_LAYOUTS)}",
                        key="--attention")
    if args.space and not args.preset:
        raise UserError("--space goes with --preset", key="--space")
    weights = "random (preset)"
    if args.preset:
        spec = load_preset(args.space, args.preset)
        dspec = None if args.decoder == "none" else load_decoder_preset(args.decoder_space, args.decoder)
        dec_name = None if dspec is None else args.decoder
        dec_arch = None if dspec is None else dspec.to_dict()
        if dspec is not None:
            _check_latents(spec, dspec.latent_channels, dec_name)  # before building anything large
        unet = SnapGenUNet.from_spec(spec).eval()
        decoder = None if dspec is None else build_decoder(dspec).eval()
    else:
        unet, decoder = _load_checkpoint(args.checkpoint)
        spec = unet.spec
        weights = f"checkpoint {args.checkpoint}"
        dec_name = "decoder" if decoder is not None else None
        dec_arch = decoder.spec.to_dict() if decoder is not None else None
        if decoder is not None:
            _check_latents(spec, decoder.spec.latent_channels, dec_name)
    out = Path(args.out)
    kw = dict(precision=args.precision, target=args.target, palettize_bits=args.palettize)
    t0 = time.perf_counter()
    written = {"unet": str(export_unet(unet, out / "unet.mlpackage", latent_size=args.latent_size,
                                       context_len=args.context_len, attention=args.attention, **kw))}
    if decoder is not None:
        written["decoder"] = str(export_decoder(decoder, out / "decoder.mlpackage", latent_channels=spec.latent_channels,
                                                latent_size=args.latent_size, name=dec_name, arch=dec_arch, **kw))
    took = time.perf_counter() - t0
    shapes = {k: io_shapes(v) for k, v in written.items()}
    summary = {"out": str(out), "files": written, "shapes": shapes, "weights": weights, "attention": args.attention,
               "precision": args.precision, "palettize_bits": args.palettize, "target": args.target,
               "latent_size": args.latent_size, "seconds": round(took, 1)}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"Core ML export of {spec.name} ({weights}), latent {args.latent_size}x{args.latent_size}, {args.precision}"
          f"{f', {args.palettize}-bit palettized' if args.palettize else ''}, attention {args.attention}, "
          f"target {args.target}, {took:.0f} s")
    for k, v in written.items():
        s = shapes[k]
        print(f"  {v}: in {s['inputs']} -> out {s['outputs']}")
    print("  (prediction and timing need macOS: ct.models.MLModel(path) there, or "
          "`archsearch latency --backend coreml` on a Mac)")
    return 0


def _run_diffusers(args):
    from snapgen.export.diffusers import export_pipeline

    if not args.checkpoint:
        raise UserError("the diffusers pipeline is made from a trained run (its latent space, text encoder and "
                        "conditioning): give --checkpoint RUN_DIR (a `snapgen train` output_dir)", key="--preset")
    t0 = time.perf_counter()
    out = export_pipeline(args.checkpoint, args.out, decoder_run=args.decoder_run)
    took = time.perf_counter() - t0
    parts = sorted(p.name for p in out.iterdir() if p.is_dir())
    if args.json:
        print(json.dumps({"out": str(out), "format": "diffusers", "components": parts, "run": args.checkpoint,
                          "seconds": round(took, 1)}))
        return 0
    print(f"diffusers pipeline of {args.checkpoint} -> {out}/ ({', '.join(parts)}), {took:.0f} s")
    print(f"  SnapGenPipeline.from_pretrained({str(out)!r}) (snapgen.pipeline), or "
          f"DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
