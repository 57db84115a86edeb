import pytest
import torch
from omegaconf import OmegaConf

from exfacegan.config import resolve_device, validate_config
from exfacegan.errors import ConfigError


def _cfg(*overrides: str):
    """The smoke experiment as composed by `python -m exfacegan.run experiment=smoke ...`."""
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "logger=none", *overrides])


def test_a_sensible_config_passes(tmp_path):
    validate_config(_cfg(f"run_dir={tmp_path / 'new' / 'run'}"))


@pytest.mark.parametrize("key, value, message", [
    ("label.threshold", 1.5, "label.threshold"),
    ("label.threshold", "mean", "label.threshold"),
    ("boundary.margin", -0.1, "margin"),
    ("label.num_references", 257, "num_references"),
    ("sample.num_samples", 1, "num_samples"),
    ("sampling.min_off", 5.0, "min_off"),
    ("sampling.per_class", 0, "per_class"),
    ("dataset.image_format", "gif", "image_format"),
    ("generate.shard", 2, "generate.shard"),
    ("fit.references_per_chunk", 0, "fit.references_per_chunk"),
    ("generate.references_per_chunk", 0, "references_per_chunk"),
    ("stages", "[sample,train]", "unknown stages"),
    ("device", f"cuda:{torch.cuda.device_count()}", "CUDA"),  # one past the last GPU, also where there are GPUs
])
def test_impossible_configs_fail_with_one_line(key, value, message):
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(_cfg(f"{key}={value}"))
    assert "\n" not in str(error.value)


def test_dataset_larger_than_the_disk_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="GB are free"):
        validate_config(_cfg(f"run_dir={tmp_path}", f"label.num_references={10**9}", f"sample.num_samples={10**9}",
                             f"sampling.per_class={10**6}"))


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


def _group_options() -> list[str]:
    from exfacegan.run import CONFIG_DIR

    return [f"{group.name}={option.stem}" for group in sorted(CONFIG_DIR.iterdir()) if group.is_dir()
            and group.name != "train" for option in sorted(group.glob("*.yaml"))]


@pytest.mark.parametrize("option", _group_options())
def test_every_shipped_group_option_passes(option, monkeypatch):
    """The table of settings refuses nothing that the shipped configs hold (mandatory paths given; the weights
    themselves are the preflight's business, tested in test_weights.py)."""
    monkeypatch.setattr("exfacegan.config.preflight", lambda cfg: None)
    cfg = _cfg(option, "stages=[sample]")
    for parent, leaf in (("embedder", "checkpoint"), ("embedder", "path"), ("gan.network", "source")):
        node = OmegaConf.select(cfg, parent)
        if leaf in node.keys() and OmegaConf.is_missing(node, leaf):
            node[leaf] = "/given/on/the/command/line"
    validate_config(cfg)
