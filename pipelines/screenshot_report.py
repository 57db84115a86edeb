"""Open a report.html in headless Chromium, save a screenshot, and check it against metrics.json.

    python pipelines/screenshot_report.py RUN/analyze/report.html [--metrics metrics.json] [--out shot.png]
    python pipelines/screenshot_report.py SWEEP/compare.html       # a sweep's page, against compare.json

Fails (exit 1, one line per problem) when Chromium exits non-zero, writes no screenshot, or logs a
console error or a failed resource load; when the page refers to anything but inline data: URIs; or
when a number shown in the HTML differs from metrics.json. Needs Debian's `chromium`
(`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from exfacegan.metrics.report import format_value

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
]
# Lines of Chromium's log that mean the page itself failed (its own start-up noise is not checked).
PAGE_ERRORS = re.compile(r"CONSOLE.*(error|Uncaught)|net::ERR_|Failed to load resource|Refused to", re.IGNORECASE)


class TaggedNumbers(HTMLParser):
    """(data-metric, data-value, shown text) of each tagged number; every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: list[tuple[str, str, str]] = []
        self.links: list[str] = []
        self.sources: list[str] = []  # what the page loads; a relative href is a link to a local file
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.links += [found[k] or "" for k in ("src", "href") if k in found]
        self.sources += [found["src"] or ""] if "src" in found else []
        if "data-metric" in found:
            self._open = [found["data-metric"] or "", found.get("data-value") or "", ""]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None:
            self.numbers.append((self._open[0], self._open[1], self._open[2]))
            self._open = None


def check_numbers(html_text: str, metrics: dict) -> list[str]:
    """Problems: numbers in the page that are not those of metrics.json, and non-inline resources."""
    parser = TaggedNumbers()
    parser.feed(html_text)
    problems = []
    if not parser.numbers:
        problems.append("the report shows no tagged numbers")
    for key, value, text in parser.numbers:
        expected = _lookup(metrics, key)
        if expected is None:
            problems.append(f"{key} is shown ({text}) but is not in metrics.json")
        elif value != repr(expected) or text != format_value(key.rpartition(".")[2], expected):
            problems.append(f"{key}: the report shows {text} (value {value}), metrics.json has {expected!r}")
        elif isinstance(expected, float) and math.isfinite(expected):
            shown = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
            decimals = len(text.rstrip("%").partition(".")[2]) + (2 if text.endswith("%") else 0)
            if abs(shown - expected) > 0.51 * 10**-decimals:
                problems.append(f"{key}: shown {text} does not round {expected!r}")
    problems += [f"the report loads {link[:60]!r}, not an inline data: URI" for link in parser.links
                 if not link.startswith("data:") and (link in parser.sources or "://" in link)]
    return problems


def _lookup(metrics: dict, key: str):
    """metrics[key], else the value its dotted path names (per_class_genuine_mean.00003, rows.2.eer)."""
    if key in metrics:
        return metrics[key]
    node = metrics
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def screenshot(report: Path, out: Path, *, width: int = 1200, height: int = 3200, timeout: int = 120) -> list[str]:
    """Take the screenshot; returns the problems Chromium reported."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return ["chromium is not installed (apt-get install -y chromium)"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="exfacegan-chromium-") as profile:
        result = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
             f"--window-size={width},{height}", report.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout,
        )
    problems = [f"chromium: {line.strip()}" for line in result.stderr.splitlines() if PAGE_ERRORS.search(line)]
    if result.returncode != 0:
        problems.append(f"chromium exited with {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")
    if not out.is_file() or out.stat().st_size == 0:
        problems.append(f"chromium wrote no screenshot to {out}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--metrics", type=Path, default=None, help="default: metrics.json beside the report")
    parser.add_argument("--out", type=Path, default=None, help="default: report_screenshot.png beside the report")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=3200)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"screenshot_report: error: {args.report} does not exist", file=sys.stderr)
        return 2
    beside = {"compare.html": "compare.json", "audit.html": "audit.json"}.get(args.report.name, "metrics.json")
    metrics_path = args.metrics or args.report.with_name(beside)
    out = args.out or args.report.with_name("report_screenshot.png")
    problems = check_numbers(args.report.read_text(), json.loads(metrics_path.read_text()))
    problems += screenshot(args.report, out, width=args.width, height=args.height)
    for problem in problems:
        print(f"screenshot_report: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"screenshot: {out} (numbers agree with {metrics_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
