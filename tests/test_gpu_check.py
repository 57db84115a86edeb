"""benchmarks/gpu_check.sh's CPU dry run writes a JSON report with every section and sane figures."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_cpu_dry_run_reports_every_section(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["quick"] is True and "pipeline" not in report
    combos = {(r["backbone"], r["precision"], r["batch"]) for r in report["synthesis"]}
    assert combos == {(b, p, n) for b in ("stylegan2", "stylegan3-t", "stylegan3-r", "gan_control")
                      for p in ("fp32", "bf16") for n in (1, 2)}
    rates = [r["images_per_s"] for r in report["synthesis"]] + [r["images_per_s"] for r in report["face_networks"].values()]
    assert all(isinstance(rate, float) and math.isfinite(rate) and rate > 0 for rate in rates)
    assert set(report["face_networks"]) == {"mtcnn_pnet_128px", "mtcnn_rnet_24px", "mtcnn_onet_48px",
                                            "iresnet18_fp32", "iresnet18_bf16"}
    fit = report["boundary_fit"]
    assert fit["n"] == 200 and fit["seconds"] > 0 and 0.5 <= fit["val_accuracy"] <= 1
    assert (tmp_path / "gpu_check.txt").read_text().startswith("device cpu")


def test_the_script_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert done.returncode == 1 and "no CUDA device" in done.stderr
