"""The sweep comparison page: a fake 2x2 sweep folder (one job failed) read back against the files it was built
from; the real callback at the end of a tiny multirun; the page in headless Chromium; the W&B summary table."""

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.axes
import pytest
import yaml
from PIL import Image
from test_report import _screenshot_module  # pipelines/screenshot_report.py, loaded from its path

from exfacegan.cli.main import main as cli_main
from exfacegan.metrics.compare import write_compare
from exfacegan.metrics.sweep_table import planned_jobs, read_sweep

SWEEP = ["label.threshold=median,0.8", "boundary.margin=0,0.05"]
COMMON = ["experiment=smoke", "logger=none"]
# The basic sweeper's order: the product of the swept values, the last override varying fastest.
JOBS = [("median", "0"), ("median", "0.05"), ("0.8", "0"), ("0.8", "0.05")]
FAILED = 3
ERROR = "fit: every code of reference 0 is labelled similar; lower label.threshold"


def _metrics(job: int) -> dict:
    return {"eer": 0.05 * (job + 1), "fmr100": 0.1 + job / 100, "fmr1000": 0.3 + job / 50, "fdr": 2.0 - job / 10,
            "d_prime": 1.5 + job / 7, "genuine_mean": 0.9 - job / 100, "impostor_mean": 0.5 + job / 100,
            "boundaries": 4, "boundaries_valid": 4 - job, "per_class_genuine_mean": {"00000": 0.9}, "embedder": "x"}


def _stats(job: int) -> dict:
    return {"attempted": 30 + job, "images": 24, "dropped": 0, "rejected_no_face": job, "rejected_similarity": 2}


def _timings(job: int) -> dict:
    return {stage: {"seconds": seconds + job, "how": "ran"}
            for stage, seconds in (("sample", 3.5), ("label", 0.25), ("fit", 1.0), ("generate", 2.0), ("analyze", 4.0))}


def _write(path: Path, payload, *, as_yaml: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(payload) if as_yaml else json.dumps(payload))


def make_sweep(root: Path, *, jobs: range = range(4)) -> Path:
    """A multirun folder as Hydra and the app leave it: jobs 0-2 finished, job 3 failed in fit."""
    _write(root / "multirun.yaml", {"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper."
                                                                         "BasicSweeper", "params": None},
                                              "overrides": {"task": [*COMMON, *SWEEP]}}}, as_yaml=True)
    for job in jobs:
        folder = root / str(job)
        threshold, margin = JOBS[job]
        _write(folder / ".hydra" / "overrides.yaml",
               [COMMON[0], COMMON[1], f"label.threshold={threshold}", f"boundary.margin={margin}"], as_yaml=True)
        _write(folder / ".hydra" / "hydra.yaml", {"hydra": {"job": {"num": job}}}, as_yaml=True)
        _write(folder / "timings.json", _timings(job) if job != FAILED else {"sample": {"seconds": 3.0, "how": "ran"}})
        (folder / "sample").mkdir()
        (folder / "sample" / "fingerprint.json").write_text("{}")
        if job == FAILED:
            (folder / "error.txt").write_text(ERROR + "\n")
            continue
        _write(folder / "analyze" / "metrics.json", _metrics(job))
        (folder / "analyze" / "report.html").write_text("<html></html>")
        _write(folder / "generate" / "stats.json", _stats(job))
    return root


def test_the_basic_sweepers_plan_is_the_product_of_the_swept_values(tmp_path: Path):
    sweep = make_sweep(tmp_path)
    assert planned_jobs(sweep) == [[*COMMON, f"label.threshold={t}", f"boundary.margin={m}"] for t, m in JOBS]


def test_the_table_holds_each_jobs_overrides_and_the_numbers_of_its_files(tmp_path: Path):
    table = write_compare(make_sweep(tmp_path))
    stored = json.loads((tmp_path / "compare.json").read_text())
    assert stored["rows"] == json.loads(json.dumps(table.rows))
    assert stored["parameters"] == ["label.threshold", "boundary.margin"]
    assert stored["common_overrides"] == COMMON
    rows = stored["rows"]
    assert [row["job"] for row in rows] == [0, 1, 2, 3]
    assert [(row["label.threshold"], row["boundary.margin"]) for row in rows] == JOBS
    assert [row["status"] for row in rows] == ["done", "done", "done", "failed"]
    for job in range(3):
        row, metrics = rows[job], _metrics(job)
        for key in ("eer", "fmr100", "fmr1000", "fdr", "d_prime", "genuine_mean", "impostor_mean", "boundaries",
                    "boundaries_valid"):
            assert row[key] == metrics[key], key
        assert (row["images"], row["attempted"]) == (24, 30 + job)
        assert row["acceptance"] == 24 / (30 + job)
        assert (row["rejected_no_face"], row["rejected_similarity"]) == (job, 2)
        assert row["seconds_sample"] == 3.5 + job and row["seconds_analyze"] == 4.0 + job
        assert row["seconds_total"] == pytest.approx(10.75 + 5 * job)
        assert row["report"] == f"{job}/analyze/report.html" and row["error"] is None
    failed = rows[FAILED]
    assert failed["error"] == ERROR and failed["report"] is None and "eer" not in failed
    assert failed["seconds_sample"] == 3.0 and "seconds_fit" not in failed
    keys = [column["key"] for column in stored["columns"]]
    assert keys[:4] == ["job", "status", "label.threshold", "boundary.margin"]
    assert {"rejected_similarity", "seconds_generate", "error", "report"} <= set(keys)


def test_jobs_planned_but_never_started_and_errors_found_only_in_the_log(tmp_path: Path):
    sweep = make_sweep(tmp_path, jobs=range(3))
    (sweep / "1" / "analyze" / "metrics.json").unlink()
    (sweep / "1" / "run.log").write_text(
        "[2026-12-02 06:00:00,000][exfacegan][INFO] - label: running\n"
        "[2026-12-02 06:00:01,000][exfacegan][ERROR] - label.threshold must be 'median' or a cosine similarity\n")
    shutil.rmtree(sweep / "2" / "analyze")
    rows = read_sweep(sweep).rows
    assert [row["status"] for row in rows] == ["done", "failed", "unfinished", "not started"]
    assert rows[1]["error"] == "label.threshold must be 'median' or a cosine similarity"
    assert rows[2]["error"] == "stopped or still running; finished stages: sample"
    assert (rows[3]["label.threshold"], rows[3]["boundary.margin"], rows[3]["folder"]) == ("0.8", "0.05", None)


def test_jobs_that_write_to_a_shared_run_dir_are_read_from_it(tmp_path: Path):
    """pipelines/paper_sg2_*.sh sweep generate shards into one run_dir: each job's job.json names it."""
    sweep = make_sweep(tmp_path / "sweep", jobs=range(2))
    shared = tmp_path / "run"
    _write(shared / "analyze" / "metrics.json", _metrics(7))
    (shared / "analyze" / "report.html").write_text("<html></html>")
    for job in range(2):
        shutil.rmtree(sweep / str(job) / "analyze")
        _write(sweep / str(job) / "job.json", {"status": "done", "run_dir": str(shared)})
    (sweep / "multirun.yaml").unlink()
    rows = read_sweep(sweep).rows
    assert [row["status"] for row in rows] == ["done", "done"]
    assert [row["eer"] for row in rows] == [_metrics(7)["eer"]] * 2
    assert rows[0]["report"] == "../run/analyze/report.html"
    (shared / "analyze" / "metrics.json").unlink()  # shards done, nothing merged or analysed yet: still done
    assert [(row["status"], "eer" in row) for row in read_sweep(sweep).rows] == [("done", False)] * 2


def test_one_line_per_other_parameter_value_in_each_metric_plot(tmp_path: Path, monkeypatch):
    drawn: list[tuple[str, list, list]] = []  # (label, x, y) of every line, in drawing order
    original = matplotlib.axes.Axes.plot

    def recording(axis, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(x), list(y)))
        return original(axis, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording)
    write_compare(make_sweep(tmp_path))
    for name in ("label.threshold", "boundary.margin"):
        with Image.open(tmp_path / "compare" / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
    # The first two lines of each figure are its EER panel's. Against the margin (a numeric axis): one line per
    # threshold, the failed job 3 (0.8, 0.05) left out.
    by_margin = [line for line in drawn if line[0].startswith("label.threshold=")]
    assert by_margin[0] == ("label.threshold=0.8", [0.0], [_metrics(2)["eer"]])
    assert by_margin[1] == ("label.threshold=median", [0.0, 0.05], [_metrics(0)["eer"], _metrics(1)["eer"]])
    # Against the threshold (categories in sweep order: median = 0, 0.8 = 1): one line per margin.
    by_threshold = [line for line in drawn if line[0].startswith("boundary.margin=")]
    assert by_threshold[0] == ("boundary.margin=0", [0, 1], [_metrics(0)["eer"], _metrics(2)["eer"]])
    assert by_threshold[1] == ("boundary.margin=0.05", [0], [_metrics(1)["eer"]])
    page = (tmp_path / "compare.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "<script" in page and "http" not in page


def test_the_numbers_shown_are_those_of_compare_json(tmp_path: Path):
    write_compare(make_sweep(tmp_path))
    page, stored = (tmp_path / "compare.html").read_text(), json.loads((tmp_path / "compare.json").read_text())
    check_numbers = _screenshot_module().check_numbers
    assert check_numbers(page, stored) == []
    tagged = check_numbers.__globals__["TaggedNumbers"]()
    tagged.feed(page)
    shown = {key: text for key, _, text in tagged.numbers}
    assert shown["rows.0.eer"] == "5.00%" and shown["rows.2.fdr"] == "1.8000" and shown["rows.1.images"] == "24"
    assert shown["rows.1.acceptance"] == f"{100 * 24 / 31:.2f}%"
    assert not any(key.startswith("rows.3.eer") for key in shown)
    assert ERROR in page and 'href="0/analyze/report.html"' in page
    wrong = json.loads(json.dumps(stored))
    wrong["rows"][2]["fdr"] = 1.9
    assert any(problem.startswith("rows.2.fdr:") for problem in check_numbers(page, wrong))


def test_cli_compare_writes_the_page_and_refuses_a_folder_without_jobs(tmp_path: Path, capsys):
    make_sweep(tmp_path / "sweep")
    assert cli_main(["compare", str(tmp_path / "sweep")]) == 0
    assert "4 jobs (3 done, 1 failed)" in capsys.readouterr().out
    assert (tmp_path / "sweep" / "compare.html").is_file()
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nowhere"):
        assert cli_main(["compare", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("exfacegan: error: ") and str(path) in err[0]


def test_stage_times_go_to_timings_json_and_the_logger(tmp_path: Path):
    from exfacegan.app import _record_time

    class Recording:
        def __init__(self):
            self.metrics = []

        def log_metrics(self, metrics, stage):
            self.metrics.append((stage, metrics))

    logger = Recording()
    _record_time(tmp_path, "sample", 1.23456, "ran", logger)
    _record_time(tmp_path, "fit", 0.5, "cached", logger)
    _record_time(tmp_path, "sample", 2.0, "ran", logger)
    assert json.loads((tmp_path / "timings.json").read_text()) == {
        "sample": {"seconds": 2.0, "how": "ran"}, "fit": {"seconds": 0.5, "how": "cached"}}
    assert logger.metrics == [("sample", {"seconds": 1.235}), ("fit", {"seconds": 0.5}), ("sample", {"seconds": 2.0})]


def _dom(page: Path, fragment: str) -> str:
    """The page's document after its script ran, as headless Chromium dumps it."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"--user-data-dir={profile}", page.as_uri() + fragment],
                                capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _job_order(dom: str) -> list[int]:
    body = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [int(job) for job in re.findall(r'<tr class="[^"]*"><td class="num" data-value="(\d+)"', body)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_the_page_sorts_in_headless_chromium_and_its_screenshot_checks(tmp_path: Path):
    write_compare(make_sweep(tmp_path))
    stored = json.loads((tmp_path / "compare.json").read_text())
    page = tmp_path / "compare.html"
    by_fdr = sorted((row for row in stored["rows"] if "fdr" in row), key=lambda row: row["fdr"])
    missing_last = [row["job"] for row in by_fdr] + [FAILED]
    assert _job_order(_dom(page, "")) == [0, 1, 2, 3]
    assert _job_order(_dom(page, "#sort=fdr")) == missing_last
    assert _job_order(_dom(page, "#sort=-fdr")) == [*reversed(missing_last[:-1]), FAILED]
    assert _job_order(_dom(page, "#sort=status")) == [0, 1, 2, 3]  # done < failed
    assert _job_order(_dom(page, "#sort=-label.threshold")) == [0, 1, 2, 3]  # "median" > "0.8"
    screenshot = _screenshot_module()
    assert screenshot.main([str(page), "--out", str(tmp_path / "shot.png"), "--height", "1600"]) == 0
    with Image.open(tmp_path / "shot.png") as image:
        assert image.size == (1200, 1600)


@pytest.mark.slow  # three jobs of the smoke pipeline in a subprocess, about 1-2 minutes on 2 cores
def test_a_real_multirun_ends_with_the_page_written_by_its_callback(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "exfacegan.run", "-m", "experiment=smoke", "logger=none", f"cache_dir={tmp_path}/cache",
         "sample.num_samples=48", "label.num_references=4", "sampling.per_class=3", "analyze.grid_identities=2",
         "label.threshold=median,1.5,0.8", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )
    # Job 1's impossible threshold ends that job only; the sweep goes on and then exits 2 with one line.
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("exfacegan: error: 1 of 3 jobs did not finish (job 1: label.threshold must be")
    sweep = tmp_path / "sweep"
    stored = json.loads((sweep / "compare.json").read_text())
    assert stored["parameters"] == ["label.threshold"]
    assert [(row["job"], row["status"], row["label.threshold"]) for row in stored["rows"]] == [
        (0, "done", "median"), (1, "failed", "1.5"), (2, "done", "0.8")]
    assert (sweep / "1" / "error.txt").read_text().startswith("label.threshold must be")
    assert not (sweep / "1" / "job.json").exists() and not (sweep / "0" / "error.txt").exists()
    assert json.loads((sweep / "0" / "job.json").read_text()) == {"status": "done", "run_dir": str(sweep / "0")}
    for row in (stored["rows"][0], stored["rows"][2]):
        metrics = json.loads((sweep / str(row["job"]) / "analyze" / "metrics.json").read_text())
        stats = json.loads((sweep / str(row["job"]) / "generate" / "stats.json").read_text())
        assert row["eer"] == metrics["eer"] and row["d_prime"] == metrics["d_prime"]
        assert row["images"] == stats["images"] == 8 * 3
        timings = json.loads((sweep / str(row["job"]) / "timings.json").read_text())
        assert set(timings) == {"sample", "label", "fit", "generate", "analyze"}
        assert all(entry["seconds"] > 0 for entry in timings.values())
        assert math.isclose(row["seconds_total"], sum(entry["seconds"] for entry in timings.values()), abs_tol=2e-3)
    assert stored["rows"][2]["seconds_sample"] < stored["rows"][0]["seconds_sample"]  # reused from the cache
    assert json.loads((sweep / "2" / "timings.json").read_text())["sample"]["how"] == "cached"
    assert (sweep / "compare.html").is_file() and (sweep / "compare" / "label.threshold.png").is_file()
    assert _screenshot_module().check_numbers((sweep / "compare.html").read_text(), stored) == []


def _offline_run(folder: Path) -> tuple[object, dict]:
    """The run record and final summary of the one offline W&B run under `folder`, read from its .wandb file
    (a LevelDB-format log of protobuf records after a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    data, position, records, pending = path.read_bytes(), 7, [], b""
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full, first, middle, last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    run = next(record.run for record in records if record.WhichOneof("record_type") == "run")
    summary = {item.key: json.loads(item.value_json) for record in records
               if record.WhichOneof("record_type") == "summary" for item in record.summary.update}
    return run, summary


@pytest.mark.slow  # two offline W&B runs, about 25 s: W&B starts its service process
def test_wandb_summary_run_holds_the_table_and_each_job_its_metrics(tmp_path: Path, monkeypatch):
    import wandb
    from omegaconf import OmegaConf

    from exfacegan.app import _record_time
    from exfacegan.loggers import WandbLogger
    from exfacegan.cli.sweep import log_sweep

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = make_sweep(tmp_path / "2026-12-02_07-00-00")
    log_sweep(write_compare(sweep), OmegaConf.create({"_target_": "exfacegan.loggers.WandbLogger"}))
    wandb.teardown()  # W&B's service process writes the run file behind finish(); this waits until it has
    stored = json.loads((sweep / "compare.json").read_text())
    (table_file,) = sweep.glob("wandb/offline-run-*/files/media/table/compare/jobs_*.table.json")
    table = json.loads(table_file.read_text())
    keys = [column["key"] for column in stored["columns"]]
    assert table["columns"] == keys
    assert table["data"] == [[row.get(key) for key in keys] for row in stored["rows"]]
    run, summary = _offline_run(sweep)
    assert (run.run_group, run.display_name) == (sweep.name, "compare")
    assert (summary["compare/jobs_done"], summary["compare/jobs_failed"]) == (3, 1)

    job = tmp_path / "job"  # a job's run: its stage times and final metrics in its summary
    logger = WandbLogger(name="label.threshold=0.8", group=sweep.name, dir=job)
    _record_time(job, "fit", 1.5, "ran", logger)
    logger.log_metrics({"eer": 0.125, "embedder": "not a number"}, "analyze")
    logger.finish()
    wandb.teardown()
    run, summary = _offline_run(job)
    assert run.run_group == sweep.name
    assert (summary["fit/seconds"], summary["analyze/eer"]) == (1.5, 0.125) and "analyze/embedder" not in summary


def test_a_failed_jobs_line_is_the_user_error_behind_hydras_wrapper_else_the_exceptions_first_line():
    from hydra.errors import InstantiationException

    from exfacegan.errors import CheckpointError
    from exfacegan.cli.sweep import one_line

    try:
        try:
            raise CheckpointError("no checkpoint at /x.pth; pass embedder.network.checkpoint=...")
        except CheckpointError as error:
            raise InstantiationException("Error in call to target 'load':\nCheckpointError(...)") from error
    except InstantiationException as wrapped:
        assert one_line(wrapped) == "no checkpoint at /x.pth; pass embedder.network.checkpoint=..."
    assert one_line(RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")) == "RuntimeError: CUDA out of memory."
    assert one_line(KeyError()) == "KeyError"
