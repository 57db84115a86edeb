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
