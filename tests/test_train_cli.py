"""`python -m exfacegan.train` end to end in subprocesses: single process, torchrun (gloo), resume, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from exfacegan.embedders import load_iresnet_embedder
from exfacegan.run import CONFIG_DIR
from exfacegan.train.evaluation import read_bin, write_bin
from ten_fold_oracle import insightface_ten_fold

CLASSES, PER_CLASS = 4, 9


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 identities x 9 images (a class colour layout plus per-image noise) and a 20-pair .bin of them."""
    root = tmp_path_factory.mktemp("train_cli")
    rng = np.random.default_rng(0)
    images = []
    for c in range(CLASSES):
        layout = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        base = np.asarray(Image.fromarray(layout.astype(np.uint8)).resize((112, 112), Image.BILINEAR), np.float32)
        for i in range(PER_CLASS):
            image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            (root / "images" / f"id{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / f"id{c}" / f"{i:02d}.png")
            images.append(image)
    images = np.stack(images).reshape(CLASSES, PER_CLASS, 112, 112, 3)
    pairs, issame = [], []
    for k in range(20):
        a = k % CLASSES
        b = a if k % 2 == 0 else (a + 1) % CLASSES
        pairs += [images[a, k % PER_CLASS], images[b, (k + 3) % PER_CLASS]]
        issame.append(a == b)
    write_bin(root / "pairs.bin", np.stack(pairs), issame)
    return root


COMMON = ["recipe=smoke", "logger=none", "batch_size=8", "optimizer.lr=0.02", "schedule.warmup_epochs=0", "log_every=1"]


def _train(args, nproc=1):
    launcher = [sys.executable, "-m", "exfacegan.train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "exfacegan.train"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(launcher + args, capture_output=True, text=True, timeout=600, env=env)


def _records(out_dir):
    return json.loads((out_dir / "eval.json").read_text())["epochs"]


@pytest.mark.slow
def test_trains_evaluates_on_a_bin_and_resumes(dataset):
    out = dataset / "run_bin"
    args = COMMON + [f"data.root={dataset / 'images'}", f"out_dir={out}", "eval.targets=[pairs]",
                     f"eval.root={dataset}", "data.num_workers=1", "eval.flip=false"]
    result = _train(args + ["epochs=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [4, 8]  # 36 images (no hold-out with a .bin target), batch 8
    assert records[1]["loss"] < records[0]["loss"]
    for r in records:
        assert set(r["eval"]) == {"pairs"}
        assert r["eval"]["pairs"]["pairs"] == 20 and len(r["eval"]["pairs"]["fold_accuracies"]) == 10
        assert 0.5 <= r["eval"]["pairs"]["accuracy"] <= 1 and r["eval"]["pairs"]["std"] >= 0
    _check_backbone_loads_as_an_embedder(out / "backbone.pt", dataset / "pairs.bin", records[-1]["eval"]["pairs"])

    result = _train(args + ["epochs=3"])  # same settings, one more epoch: resumes
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    resumed = _records(out)
    assert [r["step"] for r in resumed] == [4, 8, 12] and resumed[:2] == records
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 12

    result = _train(args + ["epochs=3", "head.m=0.2"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("exfacegan.train: error:")
    assert "head.m differ" in result.stderr


def _check_backbone_loads_as_an_embedder(checkpoint, pairs_bin, trainer_result):
    """backbone.pt of model=small loads as an embedder, which embeds as the trainer's network does and
    reproduces the trainer's own last evaluation (eval.flip=false) on the same pairs."""
    embedder = load_iresnet_embedder([1, 1, 1, 1], checkpoint, widths=[16, 32, 64, 128])
    images, issame = read_bin(pairs_bin)
    with initialize_config_dir(str(CONFIG_DIR / "train"), version_base="1.3"):
        cfg = compose("config", overrides=["data.root=x", "out_dir=unused", "recipe=smoke"])
    network = instantiate(cfg.model, _convert_="all").eval()
    network.load_state_dict(torch.load(checkpoint, weights_only=True))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(network((images.float() - 127.5) / 127.5))
    embeddings = embedder(images)
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-6)
    accuracies, thresholds = insightface_ten_fold(embeddings[0::2].numpy(), embeddings[1::2].numpy(), issame)
    assert trainer_result["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert trainer_result["best_threshold"] == pytest.approx(np.mean(thresholds), abs=1e-12)


@pytest.mark.slow
def test_torchrun_two_processes_take_the_same_steps_per_epoch(dataset):
    args = COMMON + [f"data.root={dataset / 'images'}", "eval.holdout_fraction=0.3", "data.num_workers=0", "epochs=2"]
    single = _train(args + [f"out_dir={dataset / 'one'}"])
    assert single.returncode == 0, single.stderr[-3000:]
    double = _train(args + [f"out_dir={dataset / 'two'}"], nproc=2)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _records(dataset / "one"), _records(dataset / "two")
    # 3 of 9 images per identity held out: 24 training images, global batch 8 -> 3 steps per epoch
    assert [r["steps_per_epoch"] for r in one] == [r["steps_per_epoch"] for r in two] == [3, 3]
    assert [r["world_size"] for r in two] == [2, 2] and [r["step"] for r in two] == [3, 6]
    assert torch.load(dataset / "two" / "last.pt", weights_only=True)["step"] == 6
    assert all(r["eval"]["holdout"]["pairs"] == 24 for r in one + two)  # 4 x C(3, 2) genuine, 12 impostor


@pytest.mark.slow
def test_one_line_errors(dataset):
    result = _train(["logger=none"])
    assert result.returncode == 2
    expected = "data.root is required: python -m exfacegan.train data.root=<folder of identity folders>"
    assert result.stderr.strip().splitlines()[-1] == f"exfacegan.train: error: {expected}"
    result = _train([f"data.root={dataset / 'images'}", "logger=none", "eval.targets=[lfw,pairs]",
                     f"eval.root={dataset}", f"out_dir={dataset / 'err'}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"exfacegan.train: error: no lfw.bin in eval.root={dataset}"
    result = _train([f"data.root={dataset / 'nothing'}", "logger=none", f"out_dir={dataset / 'err'}"])
    assert result.returncode == 2 and "does not exist" in result.stderr.strip().splitlines()[-1]
