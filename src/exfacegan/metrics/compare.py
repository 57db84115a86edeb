"""The sweep comparison page: `compare.html` (self-contained: inline CSS and script, figures as data: URIs)
and `compare.json` (the same table) in a multirun's folder.

Every number in the table is tagged `data-metric="rows.<i>.<key>"` with its exact value in `data-value`, so
pipelines/screenshot_report.py can check the page against compare.json as it checks a report.
"""

from __future__ import annotations

import html
import itertools
import math
import re
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from exfacegan.data.artifacts import save_json, save_text
from exfacegan.metrics.plots import Figure, _save
from exfacegan.metrics.report import CSS, format_value
from exfacegan.metrics.sweep_table import SweepTable, read_sweep

PLOTTED = (("eer", "EER"), ("fmr100", "FMR100"), ("fmr1000", "FMR1000"), ("fdr", "FDR"), ("d_prime", "d′"),
           ("genuine_mean", "genuine mean"), ("impostor_mean", "impostor mean"), ("images", "images kept"),
           ("acceptance", "acceptance"), ("seconds_total", "wall time, s"))
PAGE_CSS = CSS + """
main { max-width: none; }
.scroll { overflow-x: auto; }
#jobs th { cursor: pointer; white-space: nowrap; user-select: none; }
#jobs th[aria-sort=ascending]::after { content: " ▲"; }
#jobs th[aria-sort=descending]::after { content: " ▼"; }
#jobs td { white-space: nowrap; }
#jobs td.error { white-space: normal; min-width: 260px; color: #a3303f; }
tr.failed td, tr.unfinished td, tr[class="not started"] td { background: #fbeff1; }
"""
# Clicking a header sorts by it (again: reverse); `compare.html#sort=eer` (or `#sort=-eer`) sorts on load.
SCRIPT = """
function sortBy(key, descending) {
  const table = document.getElementById('jobs'), head = table.tHead.rows[0], body = table.tBodies[0];
  const col = Array.from(head.cells).findIndex(cell => cell.dataset.key === key);
  if (col < 0) return;
  const value = row => row.cells[col].dataset.value;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = value(a), y = value(b);
    if (x === '' || y === '') return (x === '') - (y === '');
    const order = isNaN(Number(x)) || isNaN(Number(y)) ? x.localeCompare(y) : Number(x) - Number(y);
    return descending ? -order : order;
  });
  rows.forEach(row => body.appendChild(row));
  Array.from(head.cells).forEach(cell => cell.removeAttribute('aria-sort'));
  head.cells[col].setAttribute('aria-sort', descending ? 'descending' : 'ascending');
}
document.querySelectorAll('#jobs th').forEach(th =>
  th.addEventListener('click', () => sortBy(th.dataset.key, th.getAttribute('aria-sort') === 'ascending')));
const wanted = location.hash.match(/^#sort=(-?)(.+)$/);
if (wanted) sortBy(decodeURIComponent(wanted[2]), wanted[1] === '-');
"""


def write_compare(sweep_dir: Path) -> SweepTable:
    """Write `compare.html`, `compare.json` and `compare/<parameter>.png` in `sweep_dir`; returns the table."""
    table = read_sweep(sweep_dir)
    figures = [parameter_figure(table, parameter) for parameter in table.parameters]
    save_json(table.sweep_dir / "compare.json", table.as_json())
    save_text(table.sweep_dir / "compare.html", _page(table, [figure for figure in figures if figure is not None]))
    return table


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parameter_figure(table: SweepTable, parameter: str) -> Figure | None:
    """Each plotted metric against `parameter` for the finished jobs, one line per value of the other parameters.

    Numeric values are placed on a numeric axis; otherwise (e.g. threshold=median,0.3) values are categories
    in the order the sweep lists them."""
    done = [row for row in table.rows if row["status"] == "done"]
    metrics = [(key, label) for key, label in PLOTTED if any(_finite(row.get(key)) for row in done)]
    if not done or not metrics:
        return None
    values = list(dict.fromkeys(row[parameter] for row in table.rows))
    numeric = all(_as_float(value) is not None for value in values)
    position = {value: _as_float(value) if numeric else index for index, value in enumerate(values)}
    others = [key for key in table.parameters if key != parameter]
    columns = min(4, len(metrics))
    rows_of_plots = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows_of_plots, columns, figsize=(3.4 * columns, 2.7 * rows_of_plots), squeeze=False)
    for axis, (key, label) in itertools.zip_longest(axes.flat, metrics, fillvalue=(None, None)):
        if key is None:
            axis.set_visible(False)
            continue
        for group, members in itertools.groupby(sorted(done, key=lambda row: [str(row[k]) for k in others]),
                                                key=lambda row: tuple(row[k] for k in others)):
            points = sorted((position[row[parameter]], row[key]) for row in members if _finite(row.get(key)))
            legend = ", ".join(f"{k}={v}" for k, v in zip(others, group)) or "all jobs"
            axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=legend)
        axis.set_title(label, fontsize=10)
        axis.set_xlabel(parameter, fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if not numeric:
            axis.set_xticks(range(len(values)), values)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if others:
        figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
                      bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(labels) / 4)))
    figure.tight_layout()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", parameter)
    return _save(figure, table.sweep_dir / "compare" / f"{name}.png", name, f"Metrics against {parameter}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(index: int, key: str, kind: str, value: Any) -> str:
    if value is None:
        return '<td data-value="">—</td>'
    if key == "report":
        return f'<td data-value="{html.escape(value)}"><a href="{html.escape(value)}">report</a></td>'
    if kind == "number" and _finite(value):
        tag = html.escape(f"rows.{index}.{key}")
        return (f'<td class="num" data-value="{value!r}"><span data-metric="{tag}" data-value="{value!r}">'
                f"{html.escape(format_value(key, value))}</span></td>")
    css = ' class="error"' if key == "error" else ""
    return f'<td{css} data-value="{html.escape(str(value))}">{html.escape(str(value))}</td>'


def _jobs_table(table: SweepTable) -> str:
    head = "".join(f'<th data-key="{html.escape(c.key)}" title="sort by {html.escape(c.label)}">'
                   f"{html.escape(c.label)}</th>" for c in table.columns)
    body = "".join(
        f'<tr class="{html.escape(row["status"])}">'
        + "".join(_cell(index, c.key, c.kind, row.get(c.key)) for c in table.columns) + "</tr>"
        for index, row in enumerate(table.rows)
    )
    return f'<div class="scroll"><table id="jobs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _page(table: SweepTable, figures: list[Figure]) -> str:
    common = html.escape(" ".join(table.common)) or "none"
    plots = "".join(f'<section><h2>{html.escape(figure.title)}</h2><figure><img alt="{html.escape(figure.title)}" '
                    f'src="{figure.data_uri}"></figure></section>' for figure in figures)
    if not figures:
        plots = '<section><p class="note">No plots: no job finished, or the sweep varies no parameter.</p></section>'
    title = "ExFaceGAN sweep comparison"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title><style>{PAGE_CSS}</style></head><body><main>"
        f'<h1>{title}</h1><p class="sub">{html.escape(str(table.sweep_dir))} · {len(table.rows)} jobs: {table.counts()}'
        f"<br>swept: {html.escape(', '.join(table.parameters)) or 'nothing'} · common overrides: {common}</p>"
        f"<section><h2>Jobs</h2>{_jobs_table(table)}"
        '<p class="note">Click a column to sort by it (again to reverse). Rates in %; times in seconds per stage '
        "(a stage reused from the cache or an earlier run counts the time it took to fetch).</p></section>"
        f"{plots}</main><script>{SCRIPT}</script></body></html>\n"
    )
