"""The identity report: one self-contained `report.html` (inline CSS, figures as data: URIs, no scripts).

Every number shown comes from the metrics dict that `analyze` also writes to `metrics.json`; each is
tagged `data-metric="<key>"` with its exact value in `data-value`, so the two can be checked against
each other (pipelines/screenshot_report.py does).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exfacegan.data.artifacts import save_text
from exfacegan.metrics.plots import Figure

RATE_KEYS = {"eer", "fmr100", "fmr1000", "dropped_fraction", "val_accuracy_mean", "val_accuracy_median",
             "val_accuracy_min", "val_accuracy_max", "train_accuracy_mean", "accepted_fraction",
             "accepted_fraction_class_min", "accepted_fraction_class_median", "acceptance"}
LOWEST_CLASSES_SHOWN = 10
# The header's list of how the run got each stage, between these markers, is rewritten when a run reuses the
# report from the stage cache (stamp_stage_lines).
STAGES_START, STAGES_END = '<ul class="stages">', "</ul><!-- /stages -->"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; background: #f4f5f7; color: #1d2430; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.15rem; margin: 0 0 12px; }
.sub { color: #5b6575; margin: 0 0 20px; font-size: 0.92rem; word-break: break-all; }
section { background: #fff; border-radius: 10px; padding: 18px 22px; margin: 0 0 18px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.cards { display: grid; grid-template-columns: repeat(5, 1fr); gap: 12px; margin: 0 0 18px; }
.card { background: #fff; border-radius: 10px; padding: 14px 16px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card .label { font-size: 0.85rem; color: #5b6575; font-weight: 600; letter-spacing: .03em; }
.card .value { font-size: 1.55rem; font-weight: 600; margin-top: 4px; }
.card .hint { font-size: 0.75rem; color: #7a8494; margin-top: 2px; }
table { border-collapse: collapse; font-size: 0.92rem; }
td, th { padding: 4px 14px 4px 0; text-align: left; border-bottom: 1px solid #eceef2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.row { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
.row > div:last-child { flex: 1 1 420px; min-width: 0; }
figure { margin: 0; }
img { max-width: 100%; height: auto; display: block; }
.note { color: #5b6575; font-size: 0.85rem; margin: 8px 0 0; }
.sub a { color: inherit; }
ul.stages { color: #5b6575; font-size: 0.85rem; margin: -12px 0 20px; padding-left: 18px; word-break: break-all; }
"""


def format_value(key: str, value: Any) -> str:
    """How a metric is shown: rates as percentages, other floats with 4 decimals, integers as they are."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if key in RATE_KEYS:
        return f"{100 * value:.2f}%"
    return f"{value:.4f}"


def _metric(metrics: Mapping[str, Any], key: str) -> str:
    value = metrics[key]
    return (f'<span data-metric="{html.escape(key)}" data-value="{html.escape(repr(value))}">'
            f"{html.escape(format_value(key, value))}</span>")


def _table(metrics: Mapping[str, Any], rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f'<tr><th>{html.escape(label)}</th><td class="num">{_metric(metrics, key)}</td></tr>'
        for label, key in rows if key in metrics
    )
    return f"<table>{body}</table>"


def _figure(figure: Figure | None) -> str:
    if figure is None:
        return ""
    return f'<figure><img alt="{html.escape(figure.title)}" src="{figure.data_uri}"></figure>'


def _cards(metrics: Mapping[str, Any]) -> str:
    cards = [
        ("EER", "eer", "equal error rate"),
        ("FMR100", "fmr100", "FNMR at FMR 1%"),
        ("FMR1000", "fmr1000", "FNMR at FMR 0.1%"),
        ("FDR", "fdr", "(μG−μI)² / (σG²+σI²)"),
        ("d′", "d_prime", "|μG−μI| / √((σG²+σI²)/2)"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{label}</div><div class="value">{_metric(metrics, key)}</div>'
        f'<div class="hint">{html.escape(hint)}</div></div>'
        for label, key, hint in cards
    ) + "</div>"


def _per_class_section(metrics: Mapping[str, Any], figure: Figure | None) -> str:
    means: Mapping[str, float] = metrics.get("per_class_genuine_mean", {})
    if not means:
        return ""
    lowest = sorted(means.items(), key=lambda item: item[1])[:LOWEST_CLASSES_SHOWN]
    rows = "".join(
        f'<tr><th>{html.escape(name)}</th><td class="num">'
        f'<span data-metric="per_class_genuine_mean.{html.escape(name)}" data-value="{value!r}">'
        f"{format_value('', value)}</span></td></tr>"
        for name, value in lowest
    )
    summary = _table(metrics, [
        ("identities with pairs", "per_class_genuine_classes"), ("lowest", "per_class_genuine_min"),
        ("median", "per_class_genuine_median"), ("highest", "per_class_genuine_max"),
    ])
    return (
        "<section><h2>Per-identity genuine similarity</h2>"
        f'<div class="row"><div>{summary}<p class="note">The {len(lowest)} least coherent identities:</p>'
        f"<table><tr><th>identity</th><th>mean genuine</th></tr>{rows}</table></div>"
        f"<div>{_figure(figure)}</div></div>"
        '<p class="note">Every identity\'s mean is in metrics.json (per_class_genuine_mean).</p></section>'
    )


def stage_lines_html(lines: Sequence[str]) -> str:
    """The header's list of stages (one line each, e.g. "sample: reused from <entry> (computed in <run> at
    <time>)"), between the markers that stamp_stage_lines finds."""
    return STAGES_START + "".join(f'<li class="stage">{html.escape(line)}</li>' for line in lines) + STAGES_END


def stamp_stage_lines(report: Path, lines: Sequence[str]) -> bool:
    """Rewrite the stage lines of a report's header; False when the report has none to rewrite."""
    text = Path(report).read_text(encoding="utf-8")
    start, end = text.find(STAGES_START), text.find(STAGES_END)
    if start < 0 or end < start:
        return False
    save_text(report, text[:start] + stage_lines_html(lines) + text[end + len(STAGES_END):])
    return True


def _dataset_link(metrics: Mapping[str, Any], out_dir: Path, dataset_dir: Path | None) -> str:
    """The dataset's name as metrics.json records it, linked by a path relative to the report, so that the
    link follows the report when its run folder is copied, moved or reused by another run."""
    name = html.escape(str(metrics.get("dataset", "")))
    if dataset_dir is None:
        return name
    href = os.path.relpath(Path(dataset_dir).resolve(), Path(out_dir).resolve())
    return f'<a class="dataset" href="{html.escape(Path(href).as_posix())}/">{name}</a>'


def _pose_section(metrics: Mapping[str, Any], figures: Mapping[str, Figure]) -> str:
    if not metrics["pose_faces"]:
        return ("<section><h2>Head pose</h2><p class=\"note\">No pose: the aligner used no facial landmarks "
                "(align=none or the FFHQ template), so yaw, pitch and roll are NaN in manifest.csv.</p></section>")
    return ("<section><h2>Head pose</h2><div class=\"row\"><div>" + _table(metrics, [
        ("faces with a pose", "pose_faces"), ("yaw mean", "yaw_mean"), ("yaw std", "yaw_std"),
        ("pitch mean", "pitch_mean"), ("pitch std", "pitch_std"), ("roll mean", "roll_mean"), ("roll std", "roll_std"),
        ("yaw spread per identity: lowest", "yaw_spread_class_min"), ("median", "yaw_spread_class_median"),
        ("highest", "yaw_spread_class_max"),
        ("targeted yaw spread per identity (sampling.pose): median", "target_yaw_spread_class_median"),
    ]) + f"</div><div>{_figure(figures.get('yaw_spread_histogram'))}</div></div>"
        + _figure(figures.get("pose_histogram"))
        + '<p class="note">Degrees, from the aligner\'s five landmarks (exfacegan.align.pose); each identity\'s '
        "spread (std of yaw over its images) is in metrics.json (yaw_spread_per_class).</p></section>")


def write_report(
    out_dir: Path,
    metrics: Mapping[str, Any],
    figures: Mapping[str, Figure],
    *,
    title: str = "ExFaceGAN identity report",
    dataset_dir: Path | None = None,
    stage_lines: Sequence[str] = (),
) -> Path:
    """Write `out_dir/report.html` from `metrics` and the figures keyed by Figure.name; returns its path.

    `dataset_dir`: linked from the header (relative to the report); `stage_lines`: how the run got each stage."""
    sections = [
        _cards(metrics),
        "<section><h2>Genuine and impostor similarity</h2><div class=\"row\"><div>"
        + _table(metrics, [
            ("genuine mean", "genuine_mean"), ("genuine std", "genuine_std"),
            ("impostor mean", "impostor_mean"), ("impostor std", "impostor_std"),
            ("both-sides mean", "both_sides_mean"), ("both-sides std", "both_sides_std"),
            ("EER threshold", "eer_threshold"), ("genuine pairs", "genuine_pairs"),
            ("impostor pairs", "impostor_pairs"), ("impostors sampled", "impostor_sampled"),
            ("both-sides pairs", "both_sides_pairs"),
        ])
        + f"</div><div>{_figure(figures.get('score_histogram'))}</div></div>"
        '<p class="note">Both-sides pairs (identity 2r against 2r+1, the two sides of one boundary) are impostors; '
        "they are drawn separately to show how far the boundary pushes an identity away.</p></section>",
    ]
    if "faces_attempted" in metrics:
        sections.append("<section><h2>Faces dropped, re-drawn and filtered</h2>" + _table(metrics, [
            ("generated", "faces_attempted"),
            ("re-drawn (no face or filtered: the slot's next seeded draw)", "faces_redrawn"),
            ("dropped (slots left empty)", "faces_dropped"), ("fraction dropped", "dropped_fraction"),
            ("classes short of sampling.per_class", "classes_short"),
            ("rejected: below filter.min_reference_similarity", "rejected_reference_similarity"),
            ("rejected: above filter.max_cross_similarity", "rejected_cross_similarity"),
            ("faces kept by every test (of those found)", "accepted_fraction"),
            ("per class: lowest", "accepted_fraction_class_min"), ("median", "accepted_fraction_class_median"),
        ]) + _figure(figures.get("accepted_fraction_histogram")) + "</section>")
    if "boundaries" in metrics:
        sections.append(
            "<section><h2>Identity boundaries</h2><div class=\"row\"><div>" + _table(metrics, [
                ("boundaries", "boundaries"), ("valid", "boundaries_valid"),
                ("validation accuracy, mean", "val_accuracy_mean"), ("median", "val_accuracy_median"),
                ("lowest", "val_accuracy_min"), ("highest", "val_accuracy_max"),
                ("training accuracy, mean", "train_accuracy_mean"),
            ]) + f"</div><div>{_figure(figures.get('val_accuracy_histogram'))}</div></div></section>"
        )
    if "references_left_out_real" in metrics:
        sections.append("<section><h2>References near real identities</h2>" + _table(metrics, [
            ("bound (references.max_real_similarity)", "max_real_similarity"),
            ("codes left out as references", "references_left_out_real"),
            ("highest nearest-real similarity of a kept reference", "references_nearest_real_max"),
        ]) + '<p class="note">Audit the dataset itself with <code>exfacegan audit</code>.</p></section>')
    sections.append(_per_class_section(metrics, figures.get("per_class_genuine_histogram")))
    if "pose_faces" in metrics:
        sections.append(_pose_section(metrics, figures))
    if "identity_grid" in figures:
        sections.append(
            "<section><h2>Sample images per identity</h2>" + _figure(figures["identity_grid"])
            + '<p class="note">One row per identity; its reference image (k = 0) first.</p></section>'
        )
    header = (
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="sub">{_dataset_link(metrics, out_dir, dataset_dir)} · judged by '
        f'{html.escape(str(metrics.get("embedder", "")))} · {_metric(metrics, "images")} images of '
        f'{_metric(metrics, "identities")} identities</p>'
        + stage_lines_html(stage_lines)
    )
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{header}{''.join(sections)}</main></body></html>\n"
    )
    return save_text(Path(out_dir) / "report.html", document)
