"""Run-folder artifacts as the stages read them, each checked when read: readable, and holding the keys,
shapes and dtypes the run's config implies. A damaged or foreign file stops the run with one line that
names it and says which stage to redo, instead of a traceback or a silently wrong result.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from exfacegan.errors import DataError

# What each named dimension stands for, in messages.
DIMENSIONS = {"N": "sample.num_samples", "R": "label.num_references", "w_dim": "the GAN's w_dim"}
MANIFEST_COLUMNS = ("path", "class", "side")


@dataclass(frozen=True)
class Array:
    """An array a file must hold: its dimensions (a name binds the same size across the arrays of a run,
    None is any size) and the dtype kinds it may have (NumPy's `dtype.kind` letters)."""

    dims: tuple[str | None, ...]
    kinds: str
    finite: bool = False


LATENTS = {"z": Array(("N", None), "f", True), "w": Array(("N", "w_dim"), "f", True),
           "seeds": Array(("N",), "iu"), "found": Array(("N",), "b")}
EMBEDDINGS = Array(("N", None), "f", True)
POSES = Array(("N", 3), "f")  # NaN where no face or no landmarks
LABELS = {"labels": Array(("R", "N"), "i"), "references": Array(("R",), "iu")}
BOUNDARIES = {"normals": Array(("R", "w_dim"), "f", True), "intercepts": Array(("R",), "f"),
              "val_accuracy": Array(("R",), "f"), "train_accuracy": Array(("R",), "f"), "valid": Array(("R",), "b"),
              "references": Array(("R",), "iu"), "reference_latents": Array(("R", "w_dim"), "f", True)}
# What analyze reads of the boundaries (for its validation-accuracy section).
BOUNDARY_ACCURACIES = {key: BOUNDARIES[key] for key in ("val_accuracy", "train_accuracy", "valid")}
GENERATE_STATS = {"attempted": int, "dropped": int}


def unreadable(path: Path, stage: str, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; rerun the {stage} stage (add it to stages=[...] with overwrite=true)")


def config_sizes(cfg: DictConfig) -> dict[str, int]:
    """The dimension sizes a run's config fixes: samples, references (when set), and w_dim where the config
    names it (the small random networks; a pickled network's w_dim is checked when it is loaded)."""
    sizes = {"N": int(cfg.sample.num_samples)}
    references = OmegaConf.select(cfg, "label.num_references", default=None)
    if references is not None:
        sizes["R"] = int(references)
    w_dim = OmegaConf.select(cfg, "gan.network.w_dim", default=None)
    if isinstance(w_dim, int):
        sizes["w_dim"] = w_dim
    return sizes


def read_json(path: Path, stage: str, keys: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A JSON object holding `keys` with values of those types."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise unreadable(path, stage, f"not readable JSON ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise unreadable(path, stage, f"holds a JSON {type(value).__name__}, not an object")
    for key, kind in keys.items():
        if not isinstance(value.get(key), kind):
            raise unreadable(path, stage, f"lacks {key!r} (or it is not a {getattr(kind, '__name__', kind)})")
    return value


def read_arrays(path: Path, stage: str, spec: Mapping[str, Array], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Every array of `spec` from an .npz file, checked; `sizes` (named dimensions) is filled as they bind."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in spec if key not in archive.files]
            arrays = {key: archive[key] for key in spec if key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise unreadable(path, stage, f"not a readable .npz, truncated or damaged ({type(error).__name__})") from None
    if missing:
        raise unreadable(path, stage, f"lacks the arrays {missing} (it holds {sorted(arrays)})")
    for key, array in arrays.items():
        _check(path, stage, key, array, spec[key], sizes)
    return arrays


def read_array(path: Path, stage: str, key: str, expected: Array, sizes: dict[str, int]) -> np.ndarray:
    """An .npy file, checked."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise unreadable(path, stage, f"not a readable .npy, truncated or damaged ({type(error).__name__})") from None
    if not isinstance(array, np.ndarray):
        raise unreadable(path, stage, "is not a single array")
    _check(path, stage, key, array, expected, sizes)
    return array


def _check(path: Path, stage: str, key: str, array: np.ndarray, expected: Array, sizes: dict[str, int]) -> None:
    if array.dtype.kind not in expected.kinds:
        raise unreadable(path, stage, f"{key} has dtype {array.dtype}, expected kind {expected.kinds!r}")
    if array.ndim != len(expected.dims):
        raise unreadable(path, stage, f"{key} has shape {array.shape}, expected {len(expected.dims)} dimensions")
    for size, dim in zip(array.shape, expected.dims):
        if dim is not None and sizes.setdefault(dim, size) != size:
            hint = "; made for another GAN?" if dim == "w_dim" else ""
            raise unreadable(path, stage, f"{key} has shape {array.shape}: {size} where {DIMENSIONS[dim]} is "
                                          f"{sizes[dim]}{hint}")
    if expected.finite and not np.isfinite(array).all():
        raise unreadable(path, stage, f"{key} holds NaN or infinite values")


def read_csv_header(path: Path, stage: str, columns: tuple[str, ...]) -> list[str]:
    """The header of a UTF-8 CSV file that must have `columns`; the whole file is decoded."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        header = next(csv.reader(io.StringIO(text)), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise unreadable(path, stage, f"not a readable UTF-8 CSV file ({type(error).__name__})") from None
    missing = [column for column in columns if column not in header]
    if missing:
        raise unreadable(path, stage, f"lacks the columns {missing} (its header: {header[:10]})")
    return header


def sample_latents(run_dir: Path, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    return read_arrays(run_dir / "sample" / "latents.npz", "sample", LATENTS, sizes)


def sample_embeddings(run_dir: Path, sizes: dict[str, int]) -> np.ndarray:
    return read_array(run_dir / "sample" / "embeddings.npy", "sample", "embeddings", EMBEDDINGS, sizes)


def sample_poses(run_dir: Path, sizes: dict[str, int]) -> np.ndarray | None:
    """The sample stage's head poses [N, 3] (yaw, pitch, roll), or None for a sample folder from before poses."""
    path = run_dir / "sample" / "poses.npy"
    return read_array(path, "sample", "poses", POSES, sizes) if path.is_file() else None


def labels(run_dir: Path, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """labels [R, N] in {-1, 0, 1} and references [R], indices of codes."""
    path = run_dir / "label" / "labels.npz"
    arrays = read_arrays(path, "label", LABELS, sizes)
    if arrays["labels"].size and not np.isin(arrays["labels"], (-1, 0, 1)).all():
        raise unreadable(path, "label", "labels holds values other than -1, 0 and 1")
    _check_indices(path, "label", arrays["references"], sizes["N"])
    return arrays


def boundaries(run_dir: Path, sizes: dict[str, int], spec: Mapping[str, Array] = BOUNDARIES) -> dict[str, np.ndarray]:
    """The fit stage's boundaries (`spec`: the arrays the reader needs, all of them by default)."""
    path = run_dir / "fit" / "boundaries.npz"
    arrays = read_arrays(path, "fit", spec, sizes)
    if "references" in arrays and "N" in sizes:
        _check_indices(path, "fit", arrays["references"], sizes["N"])
    return arrays


def _check_indices(path: Path, stage: str, indices: np.ndarray, count: int) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= count):
        raise unreadable(path, stage, f"references are not code indices below {count} (sample.num_samples)")


def generate_outputs(run_dir: Path) -> dict[str, Path]:
    """The generate stage's dataset folder, manifest.csv (UTF-8, with its columns) and stats.json, checked."""
    folder = run_dir / "generate"
    if not (folder / "dataset").is_dir():
        raise unreadable(folder / "dataset", "generate", "missing")
    read_csv_header(folder / "manifest.csv", "generate", MANIFEST_COLUMNS)
    read_json(folder / "stats.json", "generate", GENERATE_STATS)
    return {"dataset": folder / "dataset", "manifest": folder / "manifest.csv", "stats": folder / "stats.json"}
