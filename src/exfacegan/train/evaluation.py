"""10-fold verification on insightface .bin files (pickle of (bins, issame_list)).

A .bin is read by `exfacegan.safe_unpickle` (`BIN_PICKLE`), which resolves only what those files hold: bytes
(Python 2 strings, or Python 3 bytes pickled with protocol 2 through `_codecs.encode`), NumPy arrays of plain
numbers and bools; any other global, e.g. `os.system`, is refused, naming it, before anything is called.
"""
from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import KFold

from exfacegan.data.image_folder import decode_rgb
from exfacegan.errors import DataError
from exfacegan.safe_arrays import NUMPY_NAMES, numpy_calls
from exfacegan.safe_unpickle import Allowed, latin1_bytes, one_line, read_pickle
from exfacegan.precision import autocast

THRESHOLDS = np.arange(0, 4, 0.01)
N_FOLDS = 10


def write_bin(path: str | Path, images: np.ndarray, issame: list[bool]) -> None:
    """Write uint8 images [2P, H, W, 3] (pairs consecutive) as an insightface .bin."""
    if len(images) != 2 * len(issame):
        raise DataError(f"write_bin: {len(images)} images for {len(issame)} pairs; need 2 per pair")
    bins = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
        bins.append(buffer.getvalue())
    with open(path, "wb") as f:
        pickle.dump((bins, list(map(bool, issame))), f)


MAX_IMAGE_SIDE = 4096
# What PIL raises on corrupt image bytes besides OSError (e.g. SyntaxError: "broken PNG file").
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, struct.error, zlib.error,
                 Image.DecompressionBombError, Image.DecompressionBombWarning)
BIN_PICKLE = Allowed(calls={**numpy_calls(), ("_codecs", "encode"): latin1_bytes}, classes={}, names=NUMPY_NAMES,
                     kind="insightface .bin", holds="bytes, NumPy arrays and bools")


def _pairs(data: object, path: Path) -> tuple[list, np.ndarray]:
    """The (encoded images, issame) pair of a .bin, checked to be exactly that."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise DataError(f"{path}: expected a pair (images, issame), got {type(data).__name__}")
    bins, issame = data
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray, np.ndarray)) for b in bins):
        raise DataError(f"{path}: the images are not a list of encoded image bytes")
    try:
        flags = np.asarray(issame)
    except ValueError as error:  # ragged nesting
        raise DataError(f"{path}: issame is not a list of bools ({error})") from None
    if flags.ndim != 1 or flags.dtype != bool:
        raise DataError(f"{path}: issame is not a list of bools (dtype {flags.dtype}, {flags.ndim} dimensions)")
    return list(bins), flags


def _check_image_sizes(encoded: list[bytes]) -> None:
    """Refuse, from the headers alone, an image declaring more than MAX_IMAGE_SIDE pixels a side (PIL's
    decompression-bomb warning counts as a refusal, not a line on stderr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for data in encoded:
            with Image.open(io.BytesIO(data)) as image:
                if max(image.size) > MAX_IMAGE_SIDE:
                    raise DataError(f"an image declares {image.size[0]}x{image.size[1]} pixels "
                                    f"(at most {MAX_IMAGE_SIDE} a side)")


def read_bin(path: str | Path, size: int = 112) -> tuple[torch.Tensor, np.ndarray]:
    """Decode a .bin into uint8 images [2P, 3, size, size] and issame bool [P]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verification file {path} not found; set eval.root to the folder of <name>.bin")
    bins, issame = _pairs(read_pickle(path, BIN_PICKLE, DataError, encoding="bytes"), path)
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images for {len(issame)} pairs; need 2 per pair")
    encoded = [bytes(b) for b in bins]
    try:
        _check_image_sizes(encoded)
        with ThreadPoolExecutor(max_workers=8) as pool:
            images = list(pool.map(lambda b: decode_rgb(b, size), encoded))
    except (DataError, *_IMAGE_ERRORS) as error:
        raise DataError(f"cannot read {path} as an insightface .bin (pickled images, issame): {one_line(error)}") from None
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), np.asarray(issame, bool)


def accuracy_at(threshold: float, dist: np.ndarray, issame: np.ndarray) -> float:
    return float(((dist < threshold) == issame).mean())


def ten_fold_accuracy(emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, n_folds: int = N_FOLDS,
                      thresholds: np.ndarray = THRESHOLDS) -> dict:
    """Best threshold (squared L2 of normalised embeddings) on 9 folds, accuracy on the 10th."""
    dist = ((emb1 - emb2) ** 2).sum(1)
    accs, best = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(dist):
        train_acc = (dist[train][None, :] < thresholds[:, None]) == issame[train][None, :]
        threshold = thresholds[int(train_acc.mean(1).argmax())]
        best.append(threshold)
        accs.append(accuracy_at(threshold, dist[test], issame[test]))
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)),
            "best_threshold": float(np.mean(best)), "fold_accuracies": accs}


@dataclass
class VerificationSet:
    """Images uint8 [N, 3, H, W] and pairs [P, 2] of indices into them with same-identity flags [P]."""

    name: str
    images: torch.Tensor
    pairs: np.ndarray
    issame: np.ndarray

    def __post_init__(self) -> None:
        if len(self.pairs) < N_FOLDS:
            raise DataError(f"verification set {self.name} has {len(self.pairs)} pairs; {N_FOLDS} folds need more")

    @classmethod
    def from_bin(cls, path: str | Path, size: int = 112) -> VerificationSet:
        images, issame = read_bin(path, size)
        return cls(Path(path).stem, images, np.arange(len(images)).reshape(-1, 2), issame)


@torch.no_grad()
def embed(model: torch.nn.Module, images_uint8: torch.Tensor, batch_size: int = 64, flip: bool = True,
          device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
          channels_last: bool = False) -> np.ndarray:
    """L2-normalised embeddings of uint8 images; with `flip`, of the sum of image and mirror embeddings."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images_uint8), batch_size):
        x = (images_uint8[start:start + batch_size].to(device).float() - 127.5) / 127.5
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(autocast_dtype, device):
            e = model(x).float()
            if flip:
                e = e + model(x.flip(3)).float()
        out.append(torch.nn.functional.normalize(e).cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def verify(model: torch.nn.Module, images_uint8: torch.Tensor, issame: np.ndarray, flip: bool = True,
           batch_size: int = 64, device: str | torch.device = "cpu") -> dict:
    """10-fold verification of consecutive image pairs (the .bin layout)."""
    emb = embed(model, images_uint8, batch_size, flip, device)
    return ten_fold_accuracy(emb[0::2], emb[1::2], issame)


def evaluate(model: torch.nn.Module, sets: list[VerificationSet], **embed_options) -> dict[str, dict]:
    """Per set: 10-fold accuracy, its std over folds, mean best threshold and the number of pairs."""
    results = {}
    for dataset in sets:
        emb = embed(model, dataset.images, **embed_options)
        result = ten_fold_accuracy(emb[dataset.pairs[:, 0]], emb[dataset.pairs[:, 1]], dataset.issame)
        results[dataset.name] = {**result, "pairs": len(dataset.pairs)}
    return results
