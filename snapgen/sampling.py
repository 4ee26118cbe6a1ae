"""Sample grids: one row per class, labelled with the class name (PIL)."""
from __future__ import annotations

from pathlib import Path

import torch

from snapgen.cache import atomic_path


def save_grid(images: torch.Tensor, labels: torch.Tensor, class_names, path: str | Path, *, per_class: int = 8,
              scale: int = 2, title: str | None = None) -> Path:
    """Write a PNG grid of uint8 images (N, C, H, W): row k holds ``per_class`` samples of class k,
    with the class name at the left and an optional title on top."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    k = len(class_names)
    h, w = images.shape[-2] * scale, images.shape[-1] * scale
    label_w = 8 + max(int(font.getlength(n)) for n in class_names)
    top = 18 if title else 2
    grid = Image.new("RGB", (label_w + per_class * (w + 2), top + k * (h + 2)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 3), title, fill="black", font=font)
    for c in range(k):
        idx = (labels == c).nonzero().flatten()[:per_class]
        y = top + c * (h + 2)
        draw.text((4, y + h // 2 - 6), class_names[c], fill="black", font=font)
        for j, i in enumerate(idx.tolist()):
            img = images[i]
            img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
            tile = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((w, h), Image.NEAREST)
            grid.paste(tile, (label_w + j * (w + 2), y))
    path = Path(path)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
