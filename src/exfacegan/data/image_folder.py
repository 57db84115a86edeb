"""An image-folder face dataset: `<root>/<identity>/<image files>`, one folder per identity.

Identities and files are listed in sorted order, so sample indices and class indices are stable.
Images are decoded with Pillow to RGB and resized (bilinear) to a square `size` when needed (`decode_rgb`,
the one image decoder of the package).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from exfacegan.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageFolderDataset(Dataset):
    """Items are (uint8 image [3, size, size], class index). `classes[i]` is the folder name of class i."""

    def __init__(self, root: str | Path, size: int = 112, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a directory")
        self.size = int(size)
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes: list[str] = []
        paths: list[Path] = []
        labels: list[int] = []
        for folder in folders:
            files = sorted(
                f for f in folder.iterdir()
                if f.suffix.lower() in extensions and f.is_file() and not f.name.startswith(".")
            )
            if not files:
                continue
            labels += [len(self.classes)] * len(files)
            self.classes.append(folder.name)
            paths += files
        if not paths:
            raise DataError(
                f"no images found in {self.root}; expected <root>/<identity>/<image>{'|'.join(extensions)}"
            )
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.paths[index], self.size), int(self.labels[index])

    def class_indices(self, label: int) -> np.ndarray:
        """Sample indices of class `label`, in file order."""
        return np.flatnonzero(self.labels == label)


def decode_rgb(source: Path | bytes, size: int) -> np.ndarray:
    """An encoded image (a file, or the bytes of one) as uint8 RGB [size, size, 3], resized (bilinear) when needed."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.array(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # PIL: SyntaxError = broken PNG
        raise DataError(f"cannot read image {'bytes' if isinstance(source, bytes) else source}: {error}") from error


def load_image(path: Path, size: int) -> torch.Tensor:
    """One image file as uint8 RGB [3, size, size]."""
    return torch.from_numpy(decode_rgb(Path(path), size)).permute(2, 0, 1)
