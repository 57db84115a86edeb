"""The Hydra app: `python -m exfacegan.run [overrides]` composes conf/ and runs the selected stages."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from exfacegan.errors import ExFaceGANError
from exfacegan.sweep import sweep_continues

# The configs live in the checkout's top-level conf/ (the package is installed editable from it), so
# this resolves from any working directory.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

OmegaConf.register_new_resolver("or_default", lambda value, default: default if value in (None, "") else value, replace=True)

log = logging.getLogger("exfacegan")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from exfacegan.app import run_pipeline

    if os.environ.get("SLURM_PROCID", "0") != "0":  # one log per array task, not per rank
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run_pipeline(cfg)
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        _discard_unstarted_stages(cfg)
        log.error("%s", cause)
        print(f"exfacegan: error: {cause}", file=sys.stderr)
        if not sweep_continues():  # in a sweep, CompareCallback reports the failed jobs and exits 2 at its end
            sys.exit(2)


def _discard_unstarted_stages(cfg: DictConfig) -> None:
    """Bad input found once a stage had begun leaves no empty `<stage>.partial` folder behind."""
    from hydra.core.hydra_config import HydraConfig

    from exfacegan.pipeline import RunDirectory

    root = cfg.run_dir or (HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None)
    if root is not None and Path(root).is_dir():
        RunDirectory(Path(root)).discard_unstarted()


def user_error(error: BaseException | None) -> ExFaceGANError | None:
    """The user-facing error behind `error`, also when Hydra's instantiate has wrapped it."""
    while error is not None:
        if isinstance(error, ExFaceGANError):
            return error
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
