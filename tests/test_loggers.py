import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from exfacegan.app import _logger
from exfacegan.loggers import NullLogger, WandbLogger
from exfacegan.run import CONFIG_DIR


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", *overrides])


@pytest.mark.slow  # about 11 s: W&B starts its service process
def test_the_apps_wandb_logger_writes_an_offline_run_with_the_resolved_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _compose("logger=wandb", "logger.tags=[smoke]")
    logger = _logger(cfg, tmp_path, None)
    assert isinstance(logger, WandbLogger)
    image = tmp_path / "grid.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    logger.log_metrics({"eer": 0.25, "note": "not a number"}, "analyze")
    logger.log_image("analyze/grid", image)
    assert logger.run.config["sample"]["num_samples"] == cfg.sample.num_samples
    assert list(logger.run.tags) == ["smoke"]
    assert logger.run.summary["analyze/eer"] == 0.25 and "analyze/note" not in logger.run.summary.keys()
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert sum(path.stat().st_size for path in runs[0].glob("run-*.wandb")) > 0


def test_logger_none_logs_nothing(tmp_path):
    logger = _logger(_compose("logger=none"), tmp_path, None)
    assert type(logger) is NullLogger  # not a WandbLogger, which is a NullLogger subclass
    logger.log_metrics({"eer": 0.1}, "analyze")
    logger.finish()
    assert not (tmp_path / "wandb").exists()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
