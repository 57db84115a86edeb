"""The Hydra app: `python -m exfacegan.run [overrides]` composes conf/ and runs the selected stages."""

from __future__ import annotations

import logging
import os
import sys
from importlib import resources
from pathlib import Path

import hydra
from omegaconf import DictConfig

from exfacegan.cli.entry import report_errors, run_hydra_app
from exfacegan.cli.sweep import sweep_continues

# The configs are the top-level conf/. A source checkout (PYTHONPATH=src, or installed editable) reads its own
# copy; an installed wheel carries it as the package exfacegan.conf. Either resolves from any working directory.
_CHECKOUT_CONF = Path(__file__).resolve().parents[2] / "conf"
if (_CHECKOUT_CONF / "__init__.py").is_file():
    CONFIG_PATH = str(_CHECKOUT_CONF)
    CONFIG_DIR = _CHECKOUT_CONF
else:
    CONFIG_PATH = "pkg://exfacegan.conf"
    CONFIG_DIR = Path(str(resources.files("exfacegan.conf")))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def app(cfg: DictConfig) -> None:
    from exfacegan.app import run_pipeline

    if os.environ.get("SLURM_PROCID", "0") != "0":  # one log per array task, not per rank
        logging.getLogger().setLevel(logging.WARNING)
    status = report_errors(lambda: run_pipeline(cfg), cleanup=lambda: _discard_unstarted_stages(cfg))
    if status and not sweep_continues():  # in a sweep, CompareCallback reports the failed jobs and exits 2 at its end
        sys.exit(status)


def main() -> None:
    run_hydra_app(app)


def _discard_unstarted_stages(cfg: DictConfig) -> None:
    """Bad input found once a stage had begun leaves no empty `<stage>.partial` folder behind."""
    from hydra.core.hydra_config import HydraConfig

    from exfacegan.pipeline import RunDirectory

    root = cfg.run_dir or (HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None)
    if root is not None and Path(root).is_dir():
        RunDirectory(Path(root)).discard_unstarted()


if __name__ == "__main__":
    main()
