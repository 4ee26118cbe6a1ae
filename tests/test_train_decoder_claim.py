"""Issue 6's decoder claim at test size: the tiny decoder's PSNR is within 1 dB of the baseline decoder
trained the same way (both against the frozen test-sized proxy encoder), at a fraction of its GFLOPs.
The embedded-default numbers (docs/train.md) come from benches/train_distill.py."""
from __future__ import annotations

import pytest

from test_train import small_proxy, train_result as train

pytestmark = pytest.mark.slow


def test_tiny_decoder_within_1db_of_baseline_at_a_fraction_of_gflops(tmp_path, fmnist_small, proxy_cache):
    res = {b: train(tmp_path / f"dec-{b}", proxy_cache, *small_proxy(fmnist_small), "stage=decoder",
                    f"decoder.baseline={b}",
                    "train.steps=200")
           for b in ("false", "true")}
    tiny, base = res["false"], res["true"]
    print("tiny", tiny["psnr_db"], tiny["gflops"], "baseline", base["psnr_db"], base["gflops"])
    assert tiny["psnr_db"] >= base["psnr_db"] - 1.0
    assert tiny["gflops"] <= 0.5 * base["gflops"]
