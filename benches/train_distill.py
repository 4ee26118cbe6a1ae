"""The numbers docs/train.md shows, on the embedded default (Fashion-MNIST proxy, preset f at proxy
size, the embedded SD3-style teacher): KD modes over seeds, step distillation at 4 steps, tiny vs
baseline decoder. Runs `snapgen train` / `snapgen eval` as a user would; prints a table and JSON.

    python benches/train_distill.py --out runs/bench-train [--steps 150 --seeds 0 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "embedded-base.yaml"


def train(out: Path, *over) -> dict:
    cmd = [sys.executable, "-m", "snapgen.cli", "train", str(CFG), f"output_dir={out}", "train.progress=false",
           "train.ckpt_every=0", *over]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "result.json").read_text())


def evaluate(run: Path, *args) -> float:
    r = subprocess.run([sys.executable, "-m", "snapgen.cli", "eval", str(run), "--json", *args], check=True,
                       capture_output=True, text=True, cwd=ROOT)
    return json.loads(r.stdout)["value"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench-train")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--decoder-steps", type=int, default=400)
    a = ap.parse_args()
    out = Path(a.out)
    res = {"kd": {}, "step_distill": {}, "decoder": {}}
    for seed in a.seeds:
        for mode in ("none", "linear", "timestep_aware"):
            r = train(out / f"kd-{mode}-s{seed}", "stage=kd", f"kd.mode={mode}", f"seed={seed}",
                      f"train.steps={a.steps}", f"eval.num_samples={a.samples}")
            res["kd"].setdefault(mode, []).append(r["value"])
    init = out / f"kd-timestep_aware-s{a.seeds[0]}"
    r = train(out / "step-distill-4", "stage=step_distill", f"step_distill.init={init}", "train.lr=5e-4",
              f"train.steps={a.distill_steps}", f"eval.num_samples={a.samples}")
    res["step_distill"] = {"distilled_4_steps": r["value"],
                           "undistilled_4_steps": evaluate(init, "--steps", "4", "--num-samples", str(a.samples)),
                           "undistilled_8_steps": evaluate(init, "--steps", "8", "--num-samples", str(a.samples))}
    for b in ("false", "true"):
        r = train(out / f"decoder-baseline-{b}", "stage=decoder", f"decoder.baseline={b}",
                  f"train.steps={a.decoder_steps}")
        res["decoder"]["baseline" if b == "true" else "tiny"] = {k: r[k] for k in ("psnr_db", "gflops", "params")}
    print(json.dumps(res, indent=2))
    for mode, v in res["kd"].items():
        print(f"kd {mode:15s} " + " ".join(f"{x:7.2f}" for x in v) + f"   mean {sum(v) / len(v):.2f}")


if __name__ == "__main__":
    main()
