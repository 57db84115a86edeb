"""Image files: encoding batches to disk and preview grids."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exfacegan.data.artifacts import atomic_path

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}


def write_images(paths: list[Path], images: torch.Tensor, *, quality: int = 95, workers: int = 4) -> list[str]:
    """Encode uint8 [N, 3, H, W] images to `paths` (format from the suffix), each atomically; returns the SHA-256
    of each file's bytes, hashed in memory as they are written (no second read)."""
    array = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def write(index: int) -> str:
        path, buffer = paths[index], io.BytesIO()
        Image.fromarray(array[index]).save(buffer, format=IMAGE_FORMATS[path.suffix[1:]], quality=quality)
        data = buffer.getbuffer()
        digest = hashlib.sha256(data).hexdigest()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return digest

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(write, range(len(paths))))


def save_grid(path: Path, images: torch.Tensor, *, columns: int) -> Path:
    """Tile uint8 [N, 3, H, W] images row by row into one PNG (each preview block is an image and its face)."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    array = images.permute(0, 2, 3, 1).numpy()
    for index in range(n):
        r, col = divmod(index, columns)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = array[index]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return Path(path)
