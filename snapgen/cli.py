"""``snapgen``: train, sample, evaluate and export SnapGen models."""
from __future__ import annotations

import sys

from snapgen.clikit import run_cli

COMMANDS = {
    "proxy": "train an architecture small and short on the proxy task and print its quality metric",
    "train": "train a stage (base | kd | step_distill | decoder) from a config (archsearch promote writes one)",
    "sample": "sample a trained model: class names or prompts -> a PNG grid (steps, CFG, seed)",
    "encode": "pre-encode an ImageFolder into latent shards with an AutoencoderKL (the proxy's dataset: latents)",
    "eval": "the proxy quality metric of a trained model (snapgen train output_dir or model directory)",
    "export": "export a preset or checkpoint (UNet + decoder) to Core ML .mlpackage files (fp16, ANE-friendly "
              "attention), or a trained run as a diffusers pipeline directory (--format diffusers)",
}


def main(argv=None) -> int:
    return run_cli("snapgen", "snapgen", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
