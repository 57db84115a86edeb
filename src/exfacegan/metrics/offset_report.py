"""The offset study's page and figure: `offsets.png` (curve and image strips) and a self-contained `offsets.html`.

Every number the page shows comes from the study's JSON payload and is tagged `data-metric="<dotted path
into offsets.json>"` with its exact value in `data-value` (list items by index: `curve.same.mean.3`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from exfacegan.data.artifacts import save_text
from exfacegan.metrics.plots import GENUINE_COLOUR, IMPOSTOR_COLOUR, Figure, _save, plt
from exfacegan.metrics.report import CSS

SIDE_COLOURS = {"same": GENUINE_COLOUR, "other": IMPOSTOR_COLOUR}
SIDE_LABELS = {"same": "same side (w − u⊙n)", "other": "other side (w + u⊙n)"}
STRIP_COLUMNS_PER_SIDE = 6
TILE = 64
SIMILARITY_KEYS = ("curve.", "at_max_off.")


def strip_columns(offsets: np.ndarray, max_off: float) -> np.ndarray:
    """Indices of the positive offsets shown in the strips: at most STRIP_COLUMNS_PER_SIDE, evenly spread over
    them, always with the largest and the run's max_off."""
    positive = np.flatnonzero(offsets > 0)
    if len(positive) <= STRIP_COLUMNS_PER_SIDE:
        return positive
    spread = positive[np.linspace(0, len(positive) - 1, STRIP_COLUMNS_PER_SIDE - 1).round().astype(int)]
    return np.unique(np.concatenate([spread, np.flatnonzero(np.isclose(offsets, max_off))]))


def _strip_canvas(reference_faces: torch.Tensor, strip_faces: torch.Tensor, columns: np.ndarray) -> np.ndarray:
    """uint8 [S*TILE, C*TILE, 3]: per reference, same side from far to near, the reference, the other side."""
    index = torch.from_numpy(columns)
    rows = [strip_faces[:, 0, index].flip(1), reference_faces[:, None]]
    if strip_faces.shape[1] > 1:
        rows.append(strip_faces[:, 1, index])
    tiles = torch.cat(rows, dim=1)  # [S, C, 3, H, W]
    s, c = tiles.shape[:2]
    small = F.interpolate(tiles.flatten(0, 1).float(), size=(TILE, TILE), mode="area").round().to(torch.uint8)
    return small.view(s, c, 3, TILE, TILE).permute(0, 3, 1, 4, 2).reshape(s * TILE, c * TILE, 3).numpy()


def offsets_figure(path: Path, payload: Mapping[str, Any], reference_faces: torch.Tensor,
                   strip_faces: torch.Tensor) -> Figure:
    """Similarity to the reference against the offset magnitude (mean, 10-90 percentile band, per side), the
    run's max_off marked; beside it, image strips of the first references at increasing offsets."""
    offsets = np.asarray(payload["offsets"], dtype=float)
    columns = strip_columns(offsets, payload["max_off"])
    canvas = _strip_canvas(reference_faces, strip_faces, columns)
    height = 4.8
    strip_width = min(height * canvas.shape[1] / canvas.shape[0], 14)
    figure, (curve, strips) = plt.subplots(1, 2, figsize=(6 + strip_width, height),
                                           gridspec_kw={"width_ratios": [6, strip_width]})
    for side in payload["sides"]:
        values = payload["curve"][side]
        mean, low, high = (np.array(values[key], dtype=float) for key in ("mean", "p10", "p90"))
        colour = SIDE_COLOURS[side]
        curve.plot(offsets, mean, marker="o", markersize=3, color=colour, label=f"{SIDE_LABELS[side]}, mean")
        curve.fill_between(offsets, low, high, color=colour, alpha=0.2, label="10–90th percentile")
    curve.axvline(payload["max_off"], color="black", linestyle="--", linewidth=1,
                  label=f"sampling.max_off = {payload['max_off']:g} (the dataset)")
    low = f"min({payload['min_off']:g}, m)" if payload["min_off"] > 0 else "0"
    curve.set_xlabel(f"offset magnitude m (u ~ U({low}, m) per dimension)")
    curve.set_ylabel("cosine similarity to the reference")
    curve.set_title(f"{len(payload['references'])} references × {payload['draws']} draw(s)", fontsize=10)
    curve.legend(fontsize=8, loc="lower left")
    curve.grid(alpha=0.3)
    strips.imshow(canvas)
    labels = [f"−{offsets[i]:g}" for i in columns[::-1]] + ["ref"]
    labels += [f"+{offsets[i]:g}" for i in columns] if len(payload["sides"]) > 1 else []
    strips.set_xticks(TILE * np.arange(len(labels)) + TILE / 2, labels, fontsize=8)
    for tick, label in zip(strips.get_xticklabels(), labels):
        if label != "ref" and np.isclose(float(label[1:]), payload["max_off"]):
            tick.set_fontweight("bold")
    shown = payload["references"][: canvas.shape[0] // TILE]
    strips.set_yticks(TILE * np.arange(len(shown)) + TILE / 2, [f"ref {r}" for r in shown], fontsize=8)
    strips.set_xlabel("offset m along the boundary normal (draw 0; bold: max_off)")
    strips.tick_params(length=0)
    return _save(figure, path, "offsets", "Similarity to the reference against the offset magnitude")


def tagged(payload: Mapping[str, Any], key: str) -> str:
    """The value at dotted `key` of the payload, tagged: similarities with 4 decimals, offsets as %g, counts as
    they are, n/a where undefined."""
    value: Any = payload
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    if value is None:
        text = "n/a"
    elif isinstance(value, int):
        text = str(value)
    else:
        text = f"{value:.4f}" if key.startswith(SIMILARITY_KEYS) else f"{value:g}"
    return (f'<span data-metric="{html.escape(key)}" data-value="{html.escape(repr(value))}">'
            f"{html.escape(text)}</span>")


def _table(payload: Mapping[str, Any]) -> str:
    sides = payload["sides"]
    head = "<tr><th>m</th>" + "".join(
        f"<th>{side}: mean</th><th>p10</th><th>p90</th><th>faces</th>" for side in sides) + "</tr>"
    rows = []
    for i, offset in enumerate(payload["offsets"]):
        mark = ' style="font-weight:600;background:#fff6dc"' if np.isclose(offset, payload["max_off"]) else ""
        cells = "".join(f'<td class="num">{tagged(payload, f"curve.{side}.{key}.{i}")}</td>'
                        for side in sides for key in ("mean", "p10", "p90", "faces"))
        rows.append(f'<tr{mark}><th>{tagged(payload, f"offsets.{i}")}</th>{cells}</tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def write_offsets_page(out_dir: Path, payload: Mapping[str, Any], figure: Figure) -> Path:
    """Write `out_dir/offsets.html`; returns its path."""
    title = "ExFaceGAN offset study"
    cards = "".join(
        f'<div class="card"><div class="label">{html.escape(label)}</div><div class="value">'
        f'{tagged(payload, key)}</div><div class="hint">{html.escape(hint)}</div></div>'
        for label, key, hint in [("max_off", "max_off", "the dataset's sampling.max_off"),
                                 *[(f"{side} side at max_off", f"at_max_off.{side}.mean", "mean similarity")
                                   for side in payload["sides"]],
                                 ("references", "num_references", "first valid boundaries"),
                                 ("draws", "draws", "seeded u per reference and offset")]
    )
    rule = (f"Offset m: u ~ U(min(min_off, m), m) per dimension from the run's seeded draw t (seed "
            f"{payload['seed']}), i.e. the dataset's draw t with sampling.max_off = m; the draws of one reference "
            "move along one ray as m grows, and the highlighted row is exactly the dataset's first draws. "
            "Similarity: cosine between the aligned uint8 faces' embeddings and the reference image's; "
            "the band spans the 10th to 90th percentile over references and draws.")
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{title}</h1><p class=\"sub\">{html.escape(str(payload['run_dir']))} · judged by "
        f"{html.escape(str(payload['embedder']))}</p>"
        f'<div class="cards">{cards}</div>'
        "<section><h2>How far can an identity move along its boundary?</h2>"
        f'<figure><img alt="{html.escape(figure.title)}" src="{figure.data_uri}"></figure>'
        f'<p class="note">{html.escape(rule)}</p></section>'
        f"<section><h2>Similarity to the reference per offset</h2>{_table(payload)}</section>"
        "</main></body></html>\n"
    )
    return save_text(Path(out_dir) / "offsets.html", document)
