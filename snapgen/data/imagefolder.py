"""ImageNet-style ``ImageFolder`` data: ``root/<class_id>/<image>``, optionally with a class-name map
(JSON ``{class_id: name}`` or ImageNet's ``{index: [class_id, name]}``) for prompts.

Images are centre-cropped to a square and resized to any resolution (torchvision transforms),
returned as uint8 RGB. :class:`ImageFolderDataset` is lazy (for large sets, e.g. to pre-encode
ImageNet into latent shards); :func:`load_imagefolder` loads a small set into memory.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from snapgen.data.base import LabelledImages
from snapgen.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def read_class_map(path: str | Path) -> dict[str, str]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError("class-name map not found", file=str(p)) from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read class-name map: {e}", file=str(p)) from None
    if not isinstance(data, dict):
        raise DataError("class-name map must be a JSON object", file=str(p))
    out = {}
    for k, v in data.items():
        if isinstance(v, (list, tuple)) and len(v) == 2:  # ImageNet's imagenet_class_index.json
            out[str(v[0])] = str(v[1])
        elif isinstance(v, str):
            out[str(k)] = v
        else:
            raise DataError(f"value for {k!r} must be a name or a [class_id, name] pair", file=str(p))
    return out


class ImageFolderDataset(torch.utils.data.Dataset):
    """Lazy ``ImageFolder``: item -> (uint8 tensor (3, R, R), label)."""

    def __init__(self, root: str | Path, resolution: int, class_map: str | Path | dict | None = None):
        from torchvision.transforms import v2

        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError("image folder not found", file=str(self.root))
        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise DataError("no class folders found", file=str(self.root))
        names = read_class_map(class_map) if isinstance(class_map, (str, Path)) else dict(class_map or {})
        self.class_ids = tuple(d.name for d in class_dirs)
        self.class_names = tuple(names.get(c, c).replace("_", " ") for c in self.class_ids)
        self.samples: list[tuple[Path, int]] = []
        for label, d in enumerate(class_dirs):
            for f in sorted(d.rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                    self.samples.append((f, label))
        if not self.samples:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found", file=str(self.root))
        self.resolution = resolution
        # Centre crop to the short side, then resize (the ADM / DiT preprocessing up to antialiasing).
        self._transform = v2.Compose([v2.PILToTensor(), _CenterSquare(), v2.Resize(resolution, antialias=True)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"unreadable image: {type(e).__name__}", file=str(path)) from None
        return self._transform(im), label


class _CenterSquare(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return x[..., top:top + s, left:left + s]


def load_imagefolder(root: str | Path, resolution: int, class_map: str | Path | dict | None = None) -> LabelledImages:
    """Load a (small) image folder into memory. The content hash covers the image bytes, the
    class layout and the resolution."""
    ds = ImageFolderDataset(root, resolution, class_map)
    h = hashlib.sha256(f"{resolution}|{ds.class_ids}|{ds.class_names}".encode())
    images, labels = [], []
    for i, (path, label) in enumerate(ds.samples):
        h.update(path.relative_to(ds.root).as_posix().encode())
        h.update(path.read_bytes())
        img, _ = ds[i]
        images.append(img)
        labels.append(label)
    return LabelledImages(images=torch.stack(images), labels=torch.tensor(labels, dtype=torch.int64),
                          class_names=ds.class_names, content_hash=h.hexdigest(), source=str(ds.root))
