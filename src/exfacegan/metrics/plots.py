"""Report figures (matplotlib, Agg): each written as a PNG and kept as base64 for inlining in HTML."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from exfacegan.data.artifacts import atomic_path  # noqa: E402

GENUINE_COLOUR, IMPOSTOR_COLOUR, BOTH_SIDES_COLOUR = "#2a7ab0", "#d1495b", "#e08a00"


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    path: Path
    png_base64: str

    @property
    def data_uri(self) -> str:
        return f"data:image/png;base64,{self.png_base64}"


def _save(figure: plt.Figure, path: Path, name: str, title: str) -> Figure:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Figure(name, title, Path(path), base64.b64encode(data).decode("ascii"))


def score_histogram(
    path: Path,
    genuine: np.ndarray,
    impostor: np.ndarray,
    both_sides: np.ndarray | None = None,
    *,
    threshold: float | None = None,
    bins: int | None = None,
) -> Figure:
    """Density histograms of genuine and impostor cosine similarities (and both-sides pairs, if any).

    bins defaults to 2 * sqrt(size of the smaller set), between 20 and 100.
    """
    if bins is None:
        bins = int(np.clip(2 * np.sqrt(min(len(genuine), len(impostor))), 20, 100))
    figure, axes = plt.subplots(figsize=(7, 4))
    everything = np.concatenate([genuine, impostor, [] if both_sides is None else both_sides])
    low, high = float(everything.min()), float(everything.max())
    margin = max(0.02, 0.05 * (high - low))
    edges = np.linspace(max(-1.0, low - margin), min(1.0, high + margin), bins + 1)
    for scores, label, colour in ((genuine, "genuine (same identity)", GENUINE_COLOUR),
                                  (impostor, "impostor (different identities)", IMPOSTOR_COLOUR)):
        axes.hist(scores, bins=edges, density=True, alpha=0.5, color=colour, label=f"{label}, n={len(scores):,}")
    if both_sides is not None and len(both_sides):
        axes.hist(both_sides, bins=edges, density=True, histtype="step", linewidth=2, color=BOTH_SIDES_COLOUR,
                  label=f"both-sides pairs (class 2r vs 2r+1), n={len(both_sides):,}")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"EER threshold {threshold:.3f}")
    return finish_similarity_histogram(figure, axes, path, "score_histogram", "Genuine and impostor similarity")


def value_histogram(path: Path, values: np.ndarray, *, name: str, title: str, xlabel: str, bins: int = 40) -> Figure:
    """A plain histogram (boundary validation accuracies, per-class genuine means)."""
    figure, axes = plt.subplots(figsize=(6, 3.4))
    values = np.asarray(values, dtype=np.float64)
    axes.hist(values[np.isfinite(values)], bins=bins, color=GENUINE_COLOUR, alpha=0.8)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    axes.grid(alpha=0.3)
    return _save(figure, path, name, title)


def identity_grid(path: Path, identities: Sequence[tuple[str, torch.Tensor]]) -> Figure:
    """One row per identity of uint8 images [k, 3, H, W], its first (reference) image leftmost."""
    columns = max(len(images) for _, images in identities)
    height, width = identities[0][1].shape[-2:]
    canvas = np.full((len(identities) * height, columns * width, 3), 255, dtype=np.uint8)
    for row, (_, images) in enumerate(identities):
        tiles = images.permute(0, 2, 3, 1).cpu().numpy()
        for column, tile in enumerate(tiles):
            canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = tile
    figure, axes = plt.subplots(figsize=(1.1 * columns + 1.2, 1.1 * len(identities) + 0.4))
    axes.imshow(canvas, interpolation="nearest")
    axes.set_yticks([(row + 0.5) * height for row in range(len(identities))], [name for name, _ in identities], fontsize=8)
    axes.set_xticks([width / 2], ["reference"], fontsize=8)
    axes.tick_params(length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)
    return _save(figure, path, "identity_grid", "Sample images per identity")


def finish_similarity_histogram(figure: Any, axes: Any, path: Path, name: str, title: str) -> Figure:
    """Label a density histogram of cosine similarities, add its legend and grid, and save it."""
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(alpha=0.3)
    return _save(figure, path, name, title)
