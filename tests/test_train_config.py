import numpy as np
import pytest
import torch
from PIL import Image
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from exfacegan.embedders.iresnet import ARCHITECTURES, IResNet
from exfacegan.errors import ConfigError, DataError
from exfacegan.precision import autocast_dtype
from exfacegan.run import CONFIG_DIR
from exfacegan.train.app import resume_config, run_training
from exfacegan.train.heads import ArcFace, CosFace


def _compose(*overrides):
    with initialize_config_dir(str(CONFIG_DIR / "train"), version_base="1.3"):
        return compose("config", overrides=["data.root=x", "out_dir=unused", *overrides])


def test_paper_recipe_is_the_default():
    cfg = _compose()
    assert (cfg.batch_size, cfg.epochs, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        512, 40, 0.1, 0.9, 5e-4)
    assert list(cfg.schedule.milestones) == [22, 30, 35] and cfg.schedule.gamma == 0.1
    assert cfg.augment.flip and dict(cfg.augment.randaugment) == {"num_ops": 4, "magnitude": 16}
    head = instantiate(cfg.head, embedding_dim=512, num_classes=10)
    assert isinstance(head, CosFace) and (head.s, head.m) == (64.0, 0.35)
    assert cfg.model.arch == "iresnet50"


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34", "iresnet50", "iresnet100"])
def test_model_group_builds_the_named_iresnet(name):
    model = instantiate(_compose(f"model={name}").model, _convert_="all")
    assert isinstance(model, IResNet) and model.layers == ARCHITECTURES[name] and model.num_features == 512


def test_smoke_recipe_picks_the_small_model_and_arcface_is_selectable():
    cfg = _compose("recipe=smoke", "head=arcface")
    model = instantiate(cfg.model, _convert_="all")
    assert isinstance(model, IResNet) and (model.layers, model.widths) == ((1, 1, 1, 1), (16, 32, 64, 128))
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 128)
    assert isinstance(instantiate(cfg.head, embedding_dim=128, num_classes=3), ArcFace)
    assert _compose("recipe=smoke", "model=iresnet18").model.arch == "iresnet18"  # the command line wins


def test_resume_config_ignores_placement_and_reporting_only():
    base = resume_config(_compose(), 0.1)
    assert base == resume_config(_compose("epochs=50", "data.num_workers=1", "eval.flip=false", "logger=none",
                                          "precision=fp16", "resume=true"), 0.1)
    assert base != resume_config(_compose("head.m=0.3"), 0.1)
    assert base != resume_config(_compose("data.root=y"), 0.1)
    assert base != resume_config(_compose(), 0.0)  # a hold-out split changes the training images


def test_precision():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu, allow_auto=True) is None and autocast_dtype("fp16", cpu) is None
    with pytest.raises(ConfigError, match="precision"):
        autocast_dtype("fp8", cpu, allow_auto=True)


def test_too_few_held_out_pairs_is_a_one_line_data_error(tmp_path):
    for c in range(4):
        folder = tmp_path / "images" / str(c)
        folder.mkdir(parents=True)
        for i in range(3):  # 2 of 3 held out per identity: 4 genuine + 4 impostor pairs, fewer than 10 folds
            Image.fromarray(np.full((112, 112, 3), 60 * c + i, np.uint8)).save(folder / f"{i}.png")
    cfg = _compose("recipe=smoke", "logger=none", f"data.root={tmp_path / 'images'}", "batch_size=2",
                   "data.num_workers=0")
    cfg.out_dir = str(tmp_path / "out")
    with pytest.raises(DataError, match="8 verification pairs, fewer than 10"):
        run_training(cfg)


def test_recipe_optimizer_and_schedule_are_hydra_nodes():
    cfg = _compose()
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = instantiate(cfg.optimizer, _convert_="all")(params)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 5e-4)  # the paper's SGD
    scheduler = instantiate(cfg.schedule, _convert_="all")(optimizer, steps_per_epoch=10)
    lrs = []
    for _ in range(400):  # 40 epochs of 10 steps: /10 at epochs 22, 30 and 35
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [lrs[i] for i in (0, 219, 220, 299, 300, 350)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.0001])
    # Any optimizer: the node is its constructor, nothing is copied field by field.
    adam = _compose("optimizer._target_=torch.optim.AdamW", "~optimizer.momentum", "+optimizer.betas=[0.8,0.9]")
    optimizer = instantiate(adam.optimizer, _convert_="all")(params)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["betas"] == (0.8, 0.9)


def test_image_size_is_not_a_setting_and_any_image_size_trains(tmp_path):
    with pytest.raises(ConfigCompositionException, match="image_size"):
        _compose("data.image_size=96")
    for c in range(3):
        folder = tmp_path / "images" / str(c)
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((80, 96, 3), 70 * c + 5 * i, np.uint8)).save(folder / f"{i}.png")
    cfg = _compose("recipe=smoke", "logger=none", f"data.root={tmp_path / 'images'}", "batch_size=4", "epochs=1",
                   "data.num_workers=0", "eval.holdout_fraction=0")
    cfg.out_dir = str(tmp_path / "out")
    record = run_training(cfg)
    assert record["epoch"] == 1 and record["steps_per_epoch"] == 3  # 12 images read at 112 x 112, batch 4
