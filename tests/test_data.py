"""Data sources: Fashion-MNIST lookup / download / validation, ImageFolder, latent shards, cache writes."""
from __future__ import annotations

import functools
import gzip
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from proxy_helpers import write_idx, write_subset
from snapgen import cache
from snapgen.data import fashion_mnist as fm
from snapgen.data import load_imagefolder, load_latent_shards, write_latent_shards
from snapgen.errors import DataError


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAPGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_debian_fashion_mnist_loads_with_class_names(tmp_cache):
    test = fm.load("test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.num_classes == 10 and test.class_names[7] == "sneaker"
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.source == str(fm.DEBIAN_DIR)


def test_lookup_order_explicit_then_cache_then_debian(tmp_path, tmp_cache):
    explicit = write_subset(tmp_path / "explicit", 50, 20)
    assert len(fm.load("train", explicit)) == 50  # explicit path wins
    user = write_subset(fm.user_cache_dir(), 30, 10, gz=True)
    assert len(fm.load("train")) == 30 and fm.load("train").source == str(user)  # user cache before Debian
    with pytest.raises(DataError, match="not found"):
        fm.load("train", tmp_path / "nope")  # an explicit path never falls back


def test_corrupt_idx_is_a_data_error(tmp_path):
    d = write_subset(tmp_path / "bad", 20, 10)
    f = d / "train-images-idx3-ubyte"
    raw = f.read_bytes()
    f.write_bytes(raw[:-7])  # truncated
    with pytest.raises(DataError, match="size mismatch"):
        fm.load("train", d)
    f.write_bytes(b"\x00\x00\x0d\x03" + raw[4:])  # wrong type byte
    with pytest.raises(DataError, match="bad magic"):
        fm.load("train", d)
    f.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="gzip"):
        fm.load("train", d)


def test_corrupt_idx_cli_one_line_and_exit_code(tmp_path, capsys):
    from snapgen.cli import main

    d = write_subset(tmp_path / "bad", 20, 10)
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as e:
        main(["proxy", "--preset", "a", "--data", str(d), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "t10k-labels-idx1-ubyte" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["proxy", "--preset", "a", "--data", str(tmp_path / "missing"), "--no-progress"])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def test_download_verifies_checksums(http_dir, tmp_cache, monkeypatch):
    root, url = http_dir
    monkeypatch.setattr(fm, "DEBIAN_DIR", Path("/nonexistent"))
    for base in fm.FILES.values():  # the real files (recompressed by Debian: the content sha256 matches)
        (root / f"{base}.gz").write_bytes((Path("/usr/share/datasets/fashion-mnist") / f"{base}.gz").read_bytes())
    data = fm.load("test", mirror=url)
    assert len(data) == 10000 and data.source == str(fm.user_cache_dir())
    assert sorted(p.name for p in fm.user_cache_dir().glob("*.gz")) == sorted(f"{b}.gz" for b in fm.FILES.values())


def test_download_checksum_mismatch_writes_nothing(http_dir, tmp_cache, monkeypatch):
    root, url = http_dir
    monkeypatch.setattr(fm, "DEBIAN_DIR", Path("/nonexistent"))
    write_subset(root, 20, 10, gz=True)  # valid IDX, wrong content
    with pytest.raises(DataError, match="checksum mismatch"):
        fm.load("train", mirror=url)
    assert not any(fm.user_cache_dir().glob("*ubyte*"))  # nothing half-written or unverified
    with pytest.raises(DataError, match="download failed"):
        fm.load("train", mirror="http://127.0.0.1:9/")


def test_offline_missing_dataset_says_where_it_looked_and_the_fix(tmp_cache, monkeypatch, capsys):
    """A fresh offline machine without the data: one line naming every place looked in and the fix."""
    from snapgen.cli import main

    monkeypatch.setattr(fm, "DEBIAN_DIR", Path("/nonexistent/fashion-mnist"))
    monkeypatch.setenv(fm.MIRROR_ENV, "http://127.0.0.1:9/")
    with pytest.raises(SystemExit) as e:
        main(["proxy", "--preset", "a", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    for part in (str(fm.user_cache_dir()), "/nonexistent/fashion-mnist", "127.0.0.1:9",
                 "apt-get install dataset-fashion-mnist", "proxy.data_path"):
        assert part in err, part


def test_imagefolder_center_crop_resize_and_class_map(tmp_path):
    root = tmp_path / "imgs"
    for cid, color, size in (("n01", (255, 0, 0), (40, 20)), ("n02", (0, 0, 255), (17, 33))):
        (root / cid).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", size, color).save(root / cid / f"{i}.png")
    (tmp_path / "map.json").write_text(json.dumps({"0": ["n01", "goldfish"], "1": ["n02", "great_white_shark"]}))
    data = load_imagefolder(root, 16, tmp_path / "map.json")
    assert data.images.shape == (6, 3, 16, 16) and data.class_names == ("goldfish", "great white shark")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images[0, 0].float().mean() == 255 and data.images[3, 2].float().mean() == 255
    (root / "n02" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.jpg: unreadable image"):
        load_imagefolder(root, 16)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_latent_shards_roundtrip(tmp_path, fmt):
    lat, lab = torch.randn(10, 4, 8, 8), torch.arange(10) % 3
    d = tmp_path / "shards"
    if fmt == "safetensors":
        write_latent_shards(d, lat, lab, ["a", "b", "c"], scaling_factor=0.5, shift_factor=0.1, shard_size=4)
        assert len(list(d.glob("*.safetensors"))) == 3
    else:
        d.mkdir()
        torch.save({"latents": lat, "labels": lab}, d / "s0.pt")
        (d / "meta.json").write_text(json.dumps({"class_names": ["a", "b", "c"], "scaling_factor": 0.5,
                                                 "shift_factor": 0.1}))
    s = load_latent_shards(d)
    assert torch.equal(s.latents, lat) and torch.equal(s.labels, lab) and s.class_names == ("a", "b", "c")
    assert torch.allclose(s.normalized(), (lat - 0.1) * 0.5)
    (d / "zz.pt").write_bytes(b"corrupt")
    with pytest.raises(DataError, match="zz.pt"):
        load_latent_shards(d)


def test_atomic_write_never_leaves_partial_files(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with cache.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    calls = []
    marker = tmp_path / "entry" / "done"

    def build():
        calls.append(1)
        cache.atomic_write_bytes(marker, b"ok")

    assert cache.get_or_build(marker, build) is True
    assert cache.get_or_build(marker, build) is False and calls == [1]
