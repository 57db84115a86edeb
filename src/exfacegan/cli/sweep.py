"""Multirun sweeps: each job records how it ended (`error.txt` or `job.json`), and `CompareCallback` (registered in
conf/config.yaml under hydra.callbacks) writes the sweep's comparison page after every job and at the end,
logs the table to a W&B summary run in the sweep's group, and ends the sweep with status 2 if a job failed.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from exfacegan.data.artifacts import save_json, save_text
from exfacegan.metrics.sweep_table import ERROR_FILE, JOB_FILE, STATUSES, SweepTable

log = logging.getLogger("exfacegan")
T = TypeVar("T")


def _sweep_job_dir() -> Path | None:
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def one_line(error: BaseException) -> str:
    """The user-facing message behind `error` (also wrapped by Hydra's instantiate), else its type and first line."""
    from exfacegan.cli.entry import user_error

    cause = user_error(error)
    lines = str(cause or error).strip().splitlines()
    text = lines[0] if lines else ""
    return text if cause is not None else f"{type(error).__name__}: {text}".rstrip(": ")


def records_outcome(task: Callable[..., T]) -> Callable[..., T]:
    """In a multirun job, record how `task` ended in the job folder: `error.txt` (the one-line reason) or
    `job.json` (done, and the run folder it wrote, which `run_dir` may place elsewhere); a rerun clears both."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        folder = _sweep_job_dir()
        if folder is None:
            return task(*args, **kwargs)
        for name in (ERROR_FILE, JOB_FILE):
            (folder / name).unlink(missing_ok=True)
        try:
            result = task(*args, **kwargs)
        except Exception as error:
            save_text(folder / ERROR_FILE, one_line(error) + "\n")
            raise
        root = getattr(result, "root", folder)
        save_json(folder / JOB_FILE, {"status": "done", "run_dir": str(Path(root).resolve())})
        return result

    return wrapper


def sweep_continues() -> bool:
    """Whether a user error should end only its own job: in a multirun whose CompareCallback reports it at the end."""
    if _sweep_job_dir() is None:
        return False
    callbacks = HydraConfig.get().get("callbacks") or {}
    return any(str(node.get("_target_", "")).endswith("CompareCallback") for node in callbacks.values())


def log_sweep(table: SweepTable, logger_node: DictConfig | None) -> None:
    """The table as a wandb.Table in a summary run named `compare` in the sweep's group (the jobs' group)."""
    from exfacegan.loggers import build_logger

    logger = build_logger(logger_node, name="compare", group=table.sweep_dir.name, dir=str(table.sweep_dir),
                          config={"sweep_dir": str(table.sweep_dir), "parameters": table.parameters,
                                  "common_overrides": table.common})
    try:
        keys = [column.key for column in table.columns]
        logger.log_table("compare/jobs", keys, [[row.get(key) for key in keys] for row in table.rows])
        logger.log_metrics({f"jobs_{status.replace(' ', '_')}": table.count(status) for status in STATUSES}, "compare")
    finally:
        logger.finish()


class CompareCallback(Callback):
    """Keeps `<sweep dir>/compare.html` current while a multirun runs; logs it and reports failures at its end."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from exfacegan.metrics.compare import write_compare

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        output_dir = Path(config.hydra.runtime.output_dir)
        sweep_dir = output_dir.parents[len(Path(str(config.hydra.sweep.subdir)).parts) - 1]
        try:
            write_compare(sweep_dir)
        except Exception as error:  # the page must never stop the sweep
            log.warning("compare: could not update %s/compare.html: %s", sweep_dir, one_line(error))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from exfacegan.metrics.compare import write_compare

        sweep_dir = Path(str(config.hydra.sweep.dir))
        table = write_compare(sweep_dir)
        log_sweep(table, OmegaConf.select(config, "logger"))
        log.info("compare: %s", sweep_dir / "compare.html")
        failed = [row for row in table.rows if row["status"] != "done"]
        if failed:
            first = failed[0]
            print(f"exfacegan: error: {len(failed)} of {len(table.rows)} jobs did not finish (job {first['job']}: "
                  f"{first['error']}); see {sweep_dir / 'compare.html'}", file=sys.stderr)
            sys.exit(2)
