"""The leakage audit's page: `audit.html` (self-contained, like report.html) and its histogram figure.

Every number comes from the audit dict that is also written to `audit.json`, tagged `data-metric="<key>"`
with its exact value in `data-value` (per-class values as `per_class.<rank>.<field>`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from exfacegan.data.artifacts import save_text
from exfacegan.data.gallery import Gallery
from exfacegan.data.image_folder import ImageFolderDataset, load_image
from exfacegan.metrics.plots import GENUINE_COLOUR, IMPOSTOR_COLOUR, Figure, finish_similarity_histogram
from exfacegan.metrics.report import CSS, _figure, _table, format_value

AUDIT_CSS = ".pair img { width: 112px; height: 112px; image-rendering: pixelated; } .flag { color: #d1495b; font-weight: 600; }"


def nearest_real_histogram(path: Path, nearest_real: np.ndarray, impostors: np.ndarray, threshold: float) -> Figure:
    """Density histograms of each class's nearest-real similarity and of the judge's impostor scores."""
    figure, axes = plt.subplots(figsize=(7, 4))
    everything = np.concatenate([nearest_real, impostors])
    edges = np.linspace(max(-1.0, everything.min() - 0.02), min(1.0, everything.max() + 0.02), 61)
    axes.hist(impostors, bins=edges, density=True, alpha=0.5, color=IMPOSTOR_COLOUR,
              label=f"impostor pairs (the threshold's source), n={len(impostors):,}")
    axes.hist(nearest_real, bins=edges, density=True, alpha=0.5, color=GENUINE_COLOUR,
              label=f"synthetic class vs its nearest real identity, n={len(nearest_real):,}")
    axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    return finish_similarity_histogram(figure, axes, path, "nearest_real_histogram",
                                       "Nearest real identity against impostors")


def _face_uri(face: torch.Tensor | None) -> str:
    if face is None:
        return ""
    buffer = io.BytesIO()
    Image.fromarray(face.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return f'<img alt="face" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode("ascii")}">'


def _cell(rank: int, key: str, value: float) -> str:
    return (f'<td class="num"><span data-metric="per_class.{rank}.{key}" data-value="{value!r}">'
            f"{format_value(key, value)}</span></td>")


def _pairs_section(audit: Mapping[str, Any], dataset: ImageFolderDataset, gallery: Gallery, top: int) -> str:
    rows = []
    for rank, row in enumerate(audit["per_class"][:top]):
        synthetic = _face_uri(load_image(Path(dataset.root) / row["image"], 112))
        real = _face_uri(gallery.face(row["real_index"])) or "<em>embeddings only</em>"
        flag = '<span class="flag">flagged</span>' if row["flagged"] else ""
        rows.append(f'<tr class="pair"><td>{synthetic}</td><td>{real}</td><td>{html.escape(row["class"])}</td>'
                    f'<td>{html.escape(row["real_identity"])}</td>{_cell(rank, "similarity", row["similarity"])}'
                    f'{_cell(rank, "mean_similarity", row["mean_similarity"])}<td>{flag}</td></tr>')
    return ("<section><h2>Closest pairs</h2><table><tr><th>synthetic</th><th>nearest real</th><th>class</th>"
            "<th>real identity</th><th>best image</th><th>class mean</th><th></th></tr>" + "".join(rows) + "</table>"
            '<p class="note">Each synthetic class\'s image closest to any real image, beside that real image. '
            "Every class is in audit.json (per_class).</p></section>")


def write_audit_report(out_dir: Path, audit: Mapping[str, Any], nearest_real: np.ndarray, impostors: np.ndarray,
                       dataset: ImageFolderDataset, gallery: Gallery, top: int) -> Path:
    """Write `out_dir/audit.html` and `out_dir/nearest_real_histogram.png`; returns the page's path."""
    figure = nearest_real_histogram(Path(out_dir) / "nearest_real_histogram.png", nearest_real, impostors,
                                    audit["threshold"])
    summary = _table(audit, [
        ("synthetic classes", "classes"), ("synthetic images", "images"), ("real identities", "real_identities"),
        ("real images", "real_images"), ("false-match rate", "fmr"), ("threshold", "threshold"),
        ("impostor scores", "impostor_pairs"), ("threshold resolved (scores >= 1/FMR)", "threshold_resolved"),
        ("classes flagged", "flagged"), ("fraction flagged", "flagged_fraction"),
        ("nearest real: highest", "nearest_real_max"), ("median", "nearest_real_median"),
        ("class mean: highest", "nearest_real_mean_max"), ("comparisons", "comparisons"),
        ("flags expected by chance, at most", "chance_flags_bound"),
    ])
    header = (f"<h1>Leakage audit</h1><p class=\"sub\">{html.escape(audit['dataset'])} against "
              f"{html.escape(audit['gallery'])} ({html.escape(audit['gallery_format'])}) · judged by "
              f"{html.escape(audit['embedder'])} · impostors: {html.escape(audit['impostor_source'])}</p>")
    body = (f"<section><h2>Nearest real identity</h2><div class=\"row\"><div>{summary}</div>"
            f"<div>{_figure(figure)}</div></div><p class=\"note\">A class is flagged when its best image or its "
            "mean embedding is above the threshold, the (1 − FMR) quantile of the impostor scores.</p></section>"
            + _pairs_section(audit, dataset, gallery, top))
    document = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Leakage audit</title>"
                f"<style>{CSS}{AUDIT_CSS}</style></head><body><main>{header}{body}</main></body></html>\n")
    return save_text(Path(out_dir) / "audit.html", document)
