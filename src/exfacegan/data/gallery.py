"""Real-identity galleries for the leakage audit: read, embedded once, cached by content hash.

A gallery is one of
- an image folder `<root>/<identity>/<images>` (or flat `<root>/<images>`: each image its own identity),
- a RecordIO folder (`train.rec` + `train.idx`, data/recordio.py), labels from its records,
- an insightface `.bin` verification file: images embedded in it; the two images of a pair marked
  `issame` share an identity, every other image is its own,
- an `.npz` of precomputed embeddings: `embeddings` float [N, D] and `labels` [N] (ints or strings)
  from the same FR model as the audit.
Images must already be aligned faces (the 112x112 ArcFace template; other sizes are resized), as
insightface's .rec and .bin files hold them. Embeddings are cached in `<cache>/<sha256>.npz`, the hash
covering the gallery's bytes and the embedder's weights and settings.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from exfacegan.data.artifacts import save_npz
from exfacegan.data.image_folder import IMAGE_EXTENSIONS, ImageFolderDataset, load_image
from exfacegan.errors import DataError

FORMATS = "an image folder, a RecordIO folder (train.rec, train.idx), an insightface .bin or an .npz with embeddings and labels"
FACE_SIZE = 112


@dataclass
class Gallery:
    """L2-normalised embeddings [N, D] of real faces, their identity index [N] into `identities`, and (except for
    an embeddings file) the dataset the faces are read from, to show them."""

    source: Path
    kind: str
    embeddings: np.ndarray
    labels: np.ndarray
    identities: list[str]
    faces: Dataset | None

    def face(self, index: int) -> torch.Tensor | None:
        """uint8 [3, 112, 112] face of gallery row `index`, or None when the gallery holds only embeddings."""
        return None if self.faces is None else self.faces[int(index)][0]


class _FlatFolder(Dataset):
    """Every image of a folder, each its own identity (named after the file)."""

    def __init__(self, root: Path) -> None:
        self.paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
        if not self.paths:
            raise DataError(f"no images found in {root}; expected a gallery: {FORMATS}")
        self.labels = np.arange(len(self.paths), dtype=np.int64)
        self.classes = [p.stem for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.paths[index], FACE_SIZE), int(self.labels[index])


def _open_faces(path: Path) -> tuple[str, Dataset, np.ndarray, list[str], list[Path]]:
    """(kind, dataset of (uint8 face, label), labels, identity names, files whose bytes identify the gallery)."""
    from exfacegan.data.recordio import RecordIODataset

    if path.is_dir() and (path / "train.rec").exists():
        data = RecordIODataset(path, FACE_SIZE)
        return "recordio", data, data.labels, data.classes, [path / "train.rec", path / "train.idx"]
    if path.is_dir():
        has_folders = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
        data = ImageFolderDataset(path, FACE_SIZE) if has_folders else _FlatFolder(path)
        return ("folder" if has_folders else "flat"), data, data.labels, data.classes, data.paths
    from exfacegan.train.evaluation import read_bin

    images, issame = read_bin(path, FACE_SIZE)
    labels = np.arange(len(images), dtype=np.int64)
    labels[1::2] = np.where(issame, labels[0::2], labels[1::2])
    _, labels = np.unique(labels, return_inverse=True)
    data = TensorDataset(images, torch.from_numpy(labels))
    return "bin", data, labels, [f"bin#{i}" for i in range(labels.max() + 1)], [path]


def _read_embeddings(path: Path) -> Gallery:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not {"embeddings", "labels"} <= set(data.files):
                raise DataError(f"{path} has arrays {sorted(data.files)}; need `embeddings` [N, D] and `labels` [N]")
            embeddings, labels = data["embeddings"], data["labels"]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read {path} as an .npz of embeddings and labels: {error}") from None
    if embeddings.ndim != 2 or not len(embeddings) or labels.shape != (len(embeddings),):
        raise DataError(f"{path}: embeddings {embeddings.shape} and labels {labels.shape} must be [N >= 1, D] and [N]")
    if not np.issubdtype(embeddings.dtype, np.floating) or not np.isfinite(embeddings).all():
        raise DataError(f"{path}: embeddings must be finite floats, got {embeddings.dtype}")
    names, index = np.unique(labels, return_inverse=True)
    return Gallery(path, "embeddings", _normalised(embeddings, path), index.astype(np.int64),
                   [str(n) for n in names], None)


def _normalised(embeddings: np.ndarray, source: Path) -> np.ndarray:
    norms = np.linalg.norm(embeddings.astype(np.float32), axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"{source}: {int((norms == 0).sum())} embeddings are all zeros")
    return (embeddings / norms).astype(np.float32)


def embedder_fingerprint(embedder: nn.Module) -> str:
    """sha256 of an embedder's class, plain settings and weights: what decides its embeddings."""
    digest = hashlib.sha256(f"{type(embedder).__module__}.{type(embedder).__qualname__}".encode())
    settings = {k: v for k, v in vars(embedder).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in embedder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _content_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if file != root else file.name).encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def load_gallery(path: str | Path, embedder: nn.Module | None, *, cache_dir: Path | None, batch_size: int = 64,
                 device: str | torch.device = "cpu", num_workers: int = 0) -> Gallery:
    """The real gallery at `path`, embedded by `embedder` (or read from the cache; None only for an .npz)."""
    from exfacegan.stages.analyze import embed_dataset

    path = Path(path)
    if not path.exists():
        raise DataError(f"real gallery {path} does not exist; give {FORMATS}")
    if path.is_file() and path.suffix == ".npz":
        return _read_embeddings(path)
    if path.is_file() and path.suffix != ".bin":
        raise DataError(f"cannot read {path} as a real gallery; give {FORMATS}")
    kind, faces, labels, identities, files = _open_faces(path)
    root = path if path.is_dir() else path.parent
    key = hashlib.sha256(f"{_content_hash(root, files)}:{embedder_fingerprint(embedder)}".encode()).hexdigest()
    cached = None if cache_dir is None else Path(cache_dir) / f"{key}.npz"
    if cached is not None and cached.is_file():
        embeddings = np.load(cached)["embeddings"]
    else:
        embeddings = _normalised(embed_dataset(faces, embedder, batch_size=batch_size, device=device,
                                               num_workers=num_workers), path)
        if cached is not None:
            save_npz(cached, embeddings=embeddings, labels=labels)
    return Gallery(path, kind, embeddings, np.asarray(labels, np.int64), list(identities), faces)
