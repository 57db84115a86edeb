"""What `pip install .` gives users: a wheel that carries every module and every config of the checkout, and
whose apps compose their configs from the installed package (pkg://exfacegan.conf) from any directory."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout, so that the build writes nothing into the repository."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "*.egg-info", "__pycache__", "build", "dist", "outputs", "multirun", "wandb", "*.pt", "*.pth", "*.pkl",
        "*.onnx"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    (path,) = (tmp / "dist").glob("exfacegan-*.whl")
    return path


def _checkout_files(folder: str, pattern: str) -> set[str]:
    return {str(path.relative_to(ROOT / folder)) for path in (ROOT / folder).rglob(pattern)
            if "__pycache__" not in path.parts}


def test_wheel_carries_every_module_and_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = _checkout_files("conf", "*.yaml")
    assert "train/config.yaml" in configs and "experiment/smoke.yaml" in configs
    assert {f"exfacegan/conf/{name}" for name in configs} <= names
    assert {f"exfacegan/conf/{name}" for name in ("__init__.py", "train/__init__.py")} <= names
    assert _checkout_files("src", "*.py") <= names


@pytest.mark.slow
def test_installed_wheel_runs_from_another_directory(wheel, tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(site)  # the unpacked wheel, not this checkout's src/

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "exfacegan.run", "experiment=smoke", "logger=none", "stages=[sample]",
                             "sample.num_samples=8", "label.num_references=4", f"run_dir={run}", "cache_dir=null"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "sample" / "latents.npz").is_file()
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert {"path": "exfacegan.conf", "schema": "pkg", "provider": "main"} in hydra["runtime"]["config_sources"]
    assert hydra["runtime"]["choices"]["experiment"] == "smoke"

    trainer = subprocess.run([sys.executable, "-m", "exfacegan.train", "data.root=faces", "out_dir=out", "recipe=smoke",
                              "--cfg", "job"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    composed, recipe = yaml.safe_load(trainer.stdout), yaml.safe_load((ROOT / "conf/train/recipe/smoke.yaml").read_text())
    assert composed["data"]["root"] == "faces"
    assert (composed["epochs"], composed["optimizer"]) == (recipe["epochs"], recipe["optimizer"])
