import pytest
import torch
from omegaconf import OmegaConf

from exfacegan.config import resolve_device, validate_config
from exfacegan.errors import ConfigError


def _cfg(**overrides):
    cfg = OmegaConf.create({
        "stages": ["sample", "label", "fit", "generate"], "run_dir": None, "device": "cpu",
        "label": {"threshold": "median", "num_references": 10},
        "boundary": {"margin": 0.0},
        "sample": {"num_samples": 100},
        "sampling": {"per_class": 5, "min_off": 0.0, "max_off": 3.0, "both_sides": True},
        "dataset": {"image_format": "png"},
        "generate": {"shard": 0, "num_shards": 1},
    })
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_a_sensible_config_passes(tmp_path):
    validate_config(_cfg(run_dir=str(tmp_path / "new" / "run")))


@pytest.mark.parametrize("key, value, message", [
    ("label.threshold", 1.5, "label.threshold"),
    ("label.threshold", "mean", "label.threshold"),
    ("boundary.margin", -0.1, "margin"),
    ("label.num_references", 101, "num_references"),
    ("sample.num_samples", 1, "num_samples"),
    ("sampling.min_off", 5.0, "min_off"),
    ("sampling.per_class", 0, "per_class"),
    ("dataset.image_format", "gif", "image_format"),
    ("generate.shard", 2, "generate.shard"),
    ("fit.references_per_chunk", 0, "fit.references_per_chunk"),
    ("generate.references_per_chunk", 0, "references_per_chunk"),
    ("stages", ["sample", "train"], "unknown stages"),
    ("device", f"cuda:{torch.cuda.device_count()}", "CUDA"),  # one past the last GPU, also where there are GPUs
])
def test_impossible_configs_fail_with_one_line(key, value, message):
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(_cfg(**{key: value}))
    assert "\n" not in str(error.value)


def test_dataset_larger_than_the_disk_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="GB are free"):
        validate_config(_cfg(run_dir=str(tmp_path), **{"label.num_references": 10**9, "sample.num_samples": 10**9,
                                                         "sampling.per_class": 10**6}))


def test_auto_device_is_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto", job_number=3).type == "cpu"


def test_mandatory_settings_left_unset_are_named_in_one_line():
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["gan=gan_control"])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert "embedder.checkpoint=..." in message and "gan.network.source=..." in message
