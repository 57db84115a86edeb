"""One row per job of a Hydra sweep folder: its overrides, its status and the outcome its files record.

A job is a folder with `.hydra/overrides.yaml`; jobs that `multirun.yaml` plans (Hydra's basic sweeper)
but that never started appear as `not started`. A job is `failed` when it left `error.txt` (or an ERROR
line in its log), `done` when it left `job.json` (or `analyze/metrics.json`), and `unfinished` otherwise.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from exfacegan.data.artifacts import load_json
from exfacegan.errors import DataError

ERROR_FILE = "error.txt"
JOB_FILE = "job.json"  # written by a job that ended without error
TIMINGS_FILE = "timings.json"
STAGES = ("sample", "label", "fit", "generate", "analyze")
STATUSES = ("done", "failed", "unfinished", "not started")
# (key in analyze/metrics.json, column title)
OUTCOME = (("eer", "EER"), ("fmr100", "FMR100"), ("fmr1000", "FMR1000"), ("fdr", "FDR"), ("d_prime", "d′"),
           ("genuine_mean", "genuine mean"), ("impostor_mean", "impostor mean"),
           ("boundaries_valid", "valid boundaries"), ("boundaries", "boundaries"))
LOG_ERROR = re.compile(r"\]\[ERROR\] - (.+)$")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str  # "parameter", "number" or "text"


@dataclass(frozen=True)
class SweepTable:
    sweep_dir: Path
    parameters: list[str]  # the overridden keys whose value differs between jobs, in override order
    common: list[str]  # the overrides every job shares
    columns: list[Column]
    rows: list[dict[str, Any]]

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)

    def counts(self) -> str:
        """E.g. '3 done, 1 failed'."""
        return ", ".join(f"{self.count(status)} {status}" for status in STATUSES if self.count(status))

    def as_json(self) -> dict[str, Any]:
        return {"sweep_dir": str(self.sweep_dir), "parameters": self.parameters, "common_overrides": self.common,
                "columns": [column.__dict__ for column in self.columns], "rows": self.rows}


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def read_sweep(sweep_dir: Path) -> SweepTable:
    """The table of every job in `sweep_dir`, sorted by job number."""
    sweep_dir = Path(sweep_dir)
    found = {_job_number(folder): folder for folder in _job_folders(sweep_dir)}
    planned = planned_jobs(sweep_dir)
    if not found and not planned:
        raise DataError(f"{sweep_dir} holds no Hydra jobs (no <job>/.hydra/overrides.yaml, no multirun.yaml); "
                        "give the folder of a multirun, e.g. multirun/<date>")
    rows = [_job_row(number, sweep_dir, found[number]) for number in sorted(found)]
    rows += [_unstarted_row(number, overrides) for number, overrides in enumerate(planned) if number not in found]
    rows.sort(key=lambda row: row["job"])
    overrides = [row.pop("overrides") for row in rows]
    keys = list(dict.fromkeys(key for job in overrides for key in job))
    parameters = [key for key in keys if len({job.get(key) for job in overrides}) > 1]
    for row, job in zip(rows, overrides):
        row.update({key: job.get(key) for key in parameters})
    common = [f"{key}={overrides[0][key]}" for key in keys if key not in parameters]
    return SweepTable(sweep_dir, parameters, common, _columns(parameters, rows), rows)


def planned_jobs(sweep_dir: Path) -> list[list[str]]:
    """The overrides of every job the basic sweeper planned, in job order; [] when that cannot be told."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        hydra = OmegaConf.load(path).hydra
        if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return []
        params = hydra.sweeper.get("params") or {}
        arguments = [f"{key}={value}" for key, value in params.items()] + list(hydra.overrides.task)
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    except Exception:  # an edited or foreign multirun.yaml: show the jobs that exist
        return []
    return [list(job) for batch in batches for job in batch]


def _job_folders(sweep_dir: Path) -> list[Path]:
    """Job folders one or two levels down (hydra.sweep.subdir), without walking into their datasets."""
    found = [*sweep_dir.glob("*/.hydra/overrides.yaml"), *sweep_dir.glob("*/*/.hydra/overrides.yaml")]
    return sorted(path.parents[1] for path in found)


def _job_number(folder: Path) -> int:
    hydra = folder / ".hydra" / "hydra.yaml"
    if hydra.is_file():
        number = OmegaConf.select(OmegaConf.load(hydra), "hydra.job.num", default=None)
        if isinstance(number, int):
            return number
    return int(folder.name) if folder.name.isdigit() else -1


def _overrides(items: Sequence[str]) -> dict[str, str]:
    return dict(split_override(str(item)) for item in items)


def _unstarted_row(number: int, overrides: list[str]) -> dict[str, Any]:
    return {"job": number, "folder": None, "status": "not started", "error": None, "report": None,
            "overrides": _overrides(overrides)}


def _job_row(number: int, sweep_dir: Path, folder: Path) -> dict[str, Any]:
    overrides = _overrides(OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml")) or [])
    ended = load_json(folder / JOB_FILE) if (folder / JOB_FILE).is_file() else {}
    run = Path(ended.get("run_dir", folder))  # run_dir= puts a job's artifacts outside its Hydra folder
    report = run / "analyze" / "report.html"
    row: dict[str, Any] = {"job": number, "folder": folder.relative_to(sweep_dir).as_posix(),
                           "report": _relative(report, sweep_dir) if report.is_file() else None,
                           "overrides": overrides}
    row.update(_outcome(run))
    row["status"], row["error"] = _status(folder, run, bool(ended))
    return row


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _status(folder: Path, run: Path, ended: bool) -> tuple[str, str | None]:
    error = _error_line(folder)
    if error is not None:
        return "failed", error
    if ended or (run / "analyze" / "metrics.json").is_file():
        return "done", None
    finished = [stage for stage in STAGES if (run / stage / "fingerprint.json").is_file()]
    return "unfinished", f"stopped or still running; finished stages: {', '.join(finished) or 'none'}"


def _error_line(folder: Path) -> str | None:
    if (folder / ERROR_FILE).is_file():
        lines = (folder / ERROR_FILE).read_text().strip().splitlines()
        return lines[0] if lines else "failed (empty error.txt)"
    for log in sorted(folder.glob("*.log")):
        errors = [match.group(1) for line in log.read_text(errors="replace").splitlines()
                  if (match := LOG_ERROR.search(line))]
        if errors:
            return errors[-1]
    return None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _outcome(folder: Path) -> dict[str, Any]:
    """The numbers a job's files record; keys absent where the file is."""
    values: dict[str, Any] = {}
    metrics_path, stats_path = folder / "analyze" / "metrics.json", folder / "generate" / "stats.json"
    if metrics_path.is_file():
        metrics = load_json(metrics_path)
        values.update({key: _number(metrics.get(key)) for key, _ in OUTCOME})
    elif (folder / "fit" / "boundaries.npz").is_file():
        valid = np.load(folder / "fit" / "boundaries.npz")["valid"]
        values.update(boundaries_valid=int(valid.sum()), boundaries=int(valid.size))
    if stats_path.is_file():
        stats = load_json(stats_path)
        values.update(images=stats.get("images"), attempted=stats.get("attempted"))
        if stats.get("attempted"):
            values["acceptance"] = stats["images"] / stats["attempted"]
        values.update({key: value for key, value in stats.items() if key.startswith("rejected_")})
    if (folder / TIMINGS_FILE).is_file():
        timings = load_json(folder / TIMINGS_FILE)
        seconds = {f"seconds_{stage}": timings[stage]["seconds"] for stage in STAGES if stage in timings}
        values.update(seconds)
        values["seconds_total"] = round(sum(seconds.values()), 3)
    return values


def _columns(parameters: list[str], rows: list[dict[str, Any]]) -> list[Column]:
    present = {key for row in rows for key in row}
    numbers = [(key, label) for key, label in OUTCOME]
    numbers += [("images", "images kept"), ("attempted", "images rendered"), ("acceptance", "acceptance")]
    numbers += [(key, key.replace("_", " ", 1)) for key in sorted(present) if key.startswith("rejected_")]
    numbers += [(f"seconds_{stage}", f"{stage} s") for stage in STAGES] + [("seconds_total", "total s")]
    return ([Column("job", "job", "number"), Column("status", "status", "text")]
            + [Column(key, key, "parameter") for key in parameters] + [Column("report", "report", "text")]
            + [Column(key, label, "number") for key, label in numbers if key in present]
            + [Column("error", "error", "text")])
