"""provenance.json per stage (computed here, or reused: from which cache entry, computed in which run and when,
with the content hashes of its outputs), library versions and machine; the report header's stage lines; and a
run's record speaking of that run only: after runA, runB reusing it, and runA deleted, nothing of runB points
at runA's files but the records of where its stages were computed."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

import numpy as np
import pytest

from exfacegan.contents import CONTENTS_FILE
from exfacegan.data.card import dataset_card
from exfacegan.metrics.report import stamp_stage_lines, write_report
from exfacegan.provenance import describe_stage, run_record


class StageLines(HTMLParser):
    """The texts of the report header's stage lines, and the href of its dataset link."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.dataset_href: str | None = None
        self._in_line = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "li" and found.get("class") == "stage":
            self._in_line = True
            self.lines.append("")
        if tag == "a" and found.get("class") == "dataset":
            self.dataset_href = found.get("href")

    def handle_data(self, data: str) -> None:
        if self._in_line:
            self.lines[-1] += data

    def handle_endtag(self, tag: str) -> None:
        self._in_line = self._in_line and tag != "li"


def _parsed(report: Path) -> StageLines:
    parser = StageLines()
    parser.feed(report.read_text())
    return parser


def test_the_record_names_the_library_versions_python_cpu_and_gpus():
    import dlib
    import hydra
    import matplotlib
    import omegaconf
    import onnx
    import PIL
    import scipy
    import sklearn
    import torch

    record = run_record(_smoke())
    libraries = record["libraries"]
    for name, module in [("torch", torch), ("numpy", np), ("scipy", scipy), ("scikit-learn", sklearn),
                         ("hydra-core", hydra), ("omegaconf", omegaconf), ("pillow", PIL), ("onnx", onnx),
                         ("matplotlib", matplotlib)]:
        assert libraries[name] == module.__version__, name
    assert libraries["dlib-bin"].startswith(dlib.__version__)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.MULTILINE)
    if model:
        assert record["cpu"] == model.group(1).strip()
    if torch.cuda.is_available():
        assert record["gpus"] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        assert record["gpus"] == []


def test_stage_lines_say_computed_here_or_reused_from_which_entry_in_which_run_and_when():
    reused = {"how": "reused", "cache_entry": "/c/sample/ab", "computed_in": "/runs/a", "computed_at": "2026-01-02T03:04:05+00:00"}
    assert describe_stage("sample", reused) == \
        "sample: reused from /c/sample/ab (computed in /runs/a at 2026-01-02T03:04:05+00:00)"
    assert describe_stage("fit", {"how": "computed", "computed_at": "2026-01-02T03:04:05+00:00"}) == \
        "fit: computed here at 2026-01-02T03:04:05+00:00"
    assert describe_stage("analyze", None) == "analyze: computed here"


METRICS = {"eer": 0.1, "fmr100": 0.2, "fmr1000": 0.3, "fdr": 1.5, "d_prime": 2.0, "images": 4, "identities": 2,
           "dataset": "generate/dataset", "embedder": "E"}


def test_stamping_rewrites_the_stage_lines_and_nothing_else(tmp_path):
    (tmp_path / "generate" / "dataset").mkdir(parents=True)
    report = write_report(tmp_path / "analyze", METRICS, {}, dataset_dir=tmp_path / "generate" / "dataset",
                          stage_lines=["sample: computed here", "analyze: computed here"])
    before = report.read_text()
    assert _parsed(report).lines == ["sample: computed here", "analyze: computed here"]
    assert stamp_stage_lines(report, ["sample: reused from X (computed in <Y> at T)"])
    after = _parsed(report)
    assert after.lines == ["sample: reused from X (computed in <Y> at T)"]  # escaped and parsed back
    start, end = before.index('<ul class="stages">'), before.index("<!-- /stages -->")
    assert report.read_text().startswith(before[:start]) and report.read_text().endswith(before[end:])
    link = urljoin(report.resolve().as_uri(), after.dataset_href)  # how a browser resolves it
    assert Path(url2pathname(urlparse(link).path)) == (tmp_path / "generate" / "dataset").resolve()


def test_the_card_lists_each_stage_in_pipeline_order(tmp_path):
    stages = {"fit": {"how": "computed", "computed_at": "T2", "contents_sha256": "cd" * 32},  # as JSON sorts them
              "sample": {"how": "reused", "cache_entry": "/c/s", "computed_in": "/runs/a", "computed_at": "T1",
                         "contents_sha256": "ab" * 32}}
    (tmp_path / "config.yaml").write_text("gan: {network: {_target_: random}}\nembedder: {network: {_target_: random}}\n")
    (tmp_path / "provenance.json").write_text(json.dumps({"git_revision": "f00d", "gpus": ["G1", "G2"],
                                                          "libraries": {"torch": "9.9"}, "stages": stages}))
    card = dataset_card(tmp_path, fmt="folder", labels=np.array([0, 0, 1]), image_encoding="png", usage="u", files={})
    assert "| git_revision | f00d |" in card and "| gpus | G1, G2 |" in card and "- libraries: torch 9.9" in card
    sample = card.index(f"- sample: reused from /c/s (computed in /runs/a at T1); contents sha256 `{'ab' * 32}`")
    assert sample < card.index(f"- fit: computed here at T2; contents sha256 `{'cd' * 32}`")


def _smoke(*overrides: str):
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "logger=none", *overrides])


SMALL = ("stages=[sample,label]", "sample.num_samples=12", "label.num_references=3", "gan.batch_size=6")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_provenance_says_per_stage_computed_or_reused_from_which_entry_run_and_time(tmp_path):
    from exfacegan.app import run_pipeline, stage_fingerprints

    cache = tmp_path / "cache"
    started = datetime.now(timezone.utc).replace(microsecond=0)
    run_pipeline(_smoke(*SMALL, f"run_dir={tmp_path / 'a'}", f"cache_dir={cache}"))
    finished = datetime.now(timezone.utc)
    run_pipeline(_smoke(*SMALL, f"run_dir={tmp_path / 'b'}", f"cache_dir={cache}"))
    fingerprints = stage_fingerprints(_smoke(*SMALL))
    first, second = (json.loads((tmp_path / run / "provenance.json").read_text())["stages"] for run in "ab")
    assert sorted(first) == sorted(second) == ["label", "sample"]
    for stage in ("sample", "label"):
        folder = tmp_path / "b" / stage
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.name != CONTENTS_FILE)
        assert second[stage]["outputs"] == {name: {"sha256": _sha256(folder / name), "size": (folder / name).stat().st_size}
                                            for name in files}
        assert second[stage]["contents_sha256"] == _sha256(folder / CONTENTS_FILE)
        assert second[stage]["how"] == "reused" and first[stage]["how"] == "computed"
        assert second[stage]["cache_entry"] == str(cache / stage / fingerprints[stage])
        assert second[stage]["fingerprint"] == first[stage]["fingerprint"] == fingerprints[stage]
        assert second[stage]["computed_in"] == first[stage]["computed_in"] == str((tmp_path / "a").resolve())
        assert started <= datetime.fromisoformat(second[stage]["computed_at"]) <= finished
        assert first[stage]["cache_entry"] is None
    run_pipeline(_smoke(*SMALL, f"run_dir={tmp_path / 'b'}", f"cache_dir={cache}"))  # up to date: records carry over
    assert json.loads((tmp_path / "b" / "provenance.json").read_text())["stages"] == second


# --- end to end: runA, runB reusing every stage, runA deleted --------------------------------------------------

APP = ["experiment=smoke", "sample.num_samples=32", "label.num_references=4", "sampling.per_class=4",
       "logger=wandb", "logger.mode=offline"]


def _app(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    import exfacegan

    source = str(Path(exfacegan.__file__).resolve().parents[1])  # the code under test, also from another cwd
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run([sys.executable, "-m", "exfacegan.run", *APP, *overrides], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _provenance_removed(path: Path, text: str) -> str:
    """The text of a runB file without the records that may name the run that computed a stage."""
    if path.name in (CONTENTS_FILE, "provenance.json"):
        record = json.loads(text)
        for stage in record.get("stages", {}).values():
            stage.pop("computed_in", None)
        record.pop("computed_in", None)
        return json.dumps(record)
    if path.name == "report.html":
        return re.sub(r'<li class="stage">.*?</li>', "", text)
    if path.name == "DATASET.md":
        return re.sub(r"^- \w+: reused from .*$", "", text, flags=re.MULTILINE)
    return text


@pytest.fixture(scope="module")
def reusing_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(runA's path, runB, the cache): runA computed every stage, runB reused them all, then runA was deleted and
    runB exported (its dataset card copied into it, to be checked with the rest)."""
    from exfacegan.stages.export import export

    root = tmp_path_factory.mktemp("reuse")
    _app("hydra.run.dir=runA", f"cache_dir={root / 'cache'}", cwd=root)
    result = _app("hydra.run.dir=runB", f"cache_dir={root / 'cache'}", cwd=root)
    run_a, run_b = (root / name for name in ("runA", "runB"))
    for stage in ("sample", "label", "fit", "generate", "analyze"):
        assert f"{stage}: reused the cached result" in result.stderr + (run_b / "run.log").read_text()
    assert list(run_b.glob("wandb/offline-run-*")), "the W&B run is part of what is checked"
    run_a_path = run_a.resolve()
    shutil.rmtree(run_a)
    export(run_b, "folder", root / "exported")
    shutil.copy(root / "exported" / "DATASET.md", run_b / "DATASET.md")
    return run_a_path, run_b, root / "cache"


@pytest.mark.slow
def test_no_file_of_a_run_that_reused_another_names_the_other_but_where_its_stages_were_computed(reusing_run):
    run_a, run_b, _ = reusing_run
    needle = str(run_a).encode()
    named = []
    for path in sorted(p for p in run_b.rglob("*") if p.is_file()):  # every file, W&B's binary records too
        data = path.read_bytes()
        if needle not in data:
            continue
        if path.name not in (CONTENTS_FILE, "provenance.json", "report.html", "DATASET.md") or \
                needle in _provenance_removed(path, data.decode("utf-8")).encode():
            text = _provenance_removed(path, data.decode("utf-8", "replace")) if path.suffix in (".json", ".html", ".md") \
                else data.decode("utf-8", "replace")
            at = text.find(str(run_a))
            named.append(f"{path.relative_to(run_b)}: …{text[max(0, at - 80):at + len(str(run_a)) + 40]}…")
    assert named == []
    provenance = json.loads((run_b / "provenance.json").read_text())
    assert {stage: record["how"] for stage, record in provenance["stages"].items()} == \
        dict.fromkeys(("sample", "label", "fit", "generate", "analyze"), "reused")
    assert {record["computed_in"] for record in provenance["stages"].values()} == {str(run_a)}
    assert json.loads((run_b / "analyze" / "metrics.json").read_text())["dataset"] == "generate/dataset"


@pytest.mark.slow
def test_the_reusing_runs_report_links_its_own_dataset_and_says_where_each_stage_was_computed(reusing_run):
    from test_report import _screenshot_module

    run_a, run_b, cache = reusing_run
    report = run_b / "analyze" / "report.html"
    header = _parsed(report)
    link = urljoin(report.resolve().as_uri(), header.dataset_href)  # how a browser resolves it
    assert Path(url2pathname(urlparse(link).path)) == (run_b / "generate" / "dataset").resolve()
    assert (run_b / "generate" / "dataset").is_dir()
    assert [line.split(" (computed in ")[0] for line in header.lines] == \
        [f"{stage}: reused from {next((cache / stage).iterdir())}" for stage in
         ("sample", "label", "fit", "generate", "analyze")]
    assert all(f"(computed in {run_a} at " in line for line in header.lines)
    metrics = json.loads((run_b / "analyze" / "metrics.json").read_text())
    assert _screenshot_module().check_numbers(report.read_text(), metrics) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_the_reusing_runs_report_opens_in_headless_chromium(reusing_run, tmp_path):
    from test_report import assert_opens_in_chromium

    assert_opens_in_chromium(reusing_run[1] / "analyze" / "report.html", tmp_path / "shot.png", width=900, height=1400)
