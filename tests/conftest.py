import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """`../shared/golden`: skipped where absent, but never under CI, where it must exist."""
    path = SHARED / "golden"
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing under CI")
        pytest.skip("../shared/golden is not available")
    return path


@pytest.fixture(autouse=True)
def _restore_logging():
    """Hydra apps run in-process attach handlers to the root logger that write to the test's captured streams;
    once a test ends those streams close, so later tests would log into closed files. Restore the handlers."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("exfacegan")]
    saved = [(logger, list(logger.handlers), logger.level) for logger in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def pytest_collection_modifyitems(config, items):
    """`cuda`-marked tests need a real GPU: skipped without one (benchmarks/gpu_check.sh runs them on one)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; benchmarks/gpu_check.sh runs these on a GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
