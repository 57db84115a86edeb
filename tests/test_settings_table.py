"""Every bounded setting of the settings table (`config.SETTINGS`) is accepted at its declared edge and refused
just past it, through `validate_config` on a composed config: the edges come from the ranges the table declares
(both ends inclusive, as its messages say: "in [low, high]", ">= low"), plus a few listed by hand.

Hydra composes once per group selection (module-scoped); each case validates a copy with one value changed.
"""

import copy
import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exfacegan.config import MAX_SEED, SETTINGS, register_resolvers, validate_config
from exfacegan.errors import ConfigError
from exfacegan.run import CONFIG_DIR

BASE = ["experiment=smoke", "logger=none", "cache_dir=null"]
# Group options that hold the keys the default groups lack (dlib's aligner and embedder, a judge, W&B).
SELECTIONS = {
    "smoke": [],
    "dlib": ["embedder=dlib", "align=dlib", "align@label_align=dlib", "embedder@analyze.judge=dlib",
             "embedder@filter.judge=dlib"],
    "onnx": ["embedder=onnx", "embedder.path=arcface_r50_webface600k", "embedder@analyze.judge=onnx",
             "analyze.judge.path=arcface_r50_webface600k", "embedder@filter.judge=onnx",
             "filter.judge.path=arcface_r50_webface600k"],
}
# A value each setting's own check refuses, by check function (channel values: a number or three).
REFUSED_BY_CHECK = {"_precision": "fp8", "_channels.<locals>.check": [1, 2], "_template": "arcface_shift9",
                    "_jobs": -2}
# Settings whose edge clashes with another setting's smoke value: the other value that lets the edge through.
COMPANIONS = {
    "sample.num_samples": {"label.num_references": 2},
    "generate.shard": {"generate.num_shards": 2},
    "label.pool_size": {"label.num_references": 2},
}


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> dict:
    register_resolvers()
    run_dir = str(tmp_path_factory.mktemp("run"))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return {name: compose("config", overrides=[*BASE, f"run_dir={run_dir}", *extra])
                for name, extra in SELECTIONS.items()}


def _validate(cfg, key: str, value, companions: dict | None = None) -> None:
    cfg = copy.deepcopy(cfg)
    for other, other_value in (companions or {}).items():
        OmegaConf.update(cfg, other, other_value)
    OmegaConf.update(cfg, key, value)
    validate_config(cfg)


def _edges() -> list[tuple[str, str, object, object]]:
    """(key, side, the edge value, the value just past it) for every declared bound."""
    cases = []
    for key, setting in SETTINGS.items():
        if setting.kind not in (int, float):
            continue
        step = {int: lambda edge, way: edge + way, float: lambda edge, way: math.nextafter(edge, way * math.inf)}[setting.kind]
        if setting.low is not None:
            cases.append((key, "low", setting.kind(setting.low), step(setting.kind(setting.low), -1)))
        if setting.high is not None:
            cases.append((key, "high", setting.kind(setting.high), step(setting.kind(setting.high), +1)))
    return cases


def _selection(composed: dict, key: str):
    for cfg in composed.values():
        if OmegaConf.select(cfg, key, default="<absent>") != "<absent>":
            return cfg
    pytest.fail(f"{key} is in no composed config: add a group selection that has it to SELECTIONS")


@pytest.mark.parametrize("key, side, edge, past", _edges(), ids=lambda value: str(value))
def test_every_declared_bound_is_inclusive(composed, key, side, edge, past):
    cfg = _selection(composed, key)
    companions = COMPANIONS.get(key, {})
    _validate(cfg, key, edge, companions)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + " must be") as refused:
        _validate(cfg, key, past, companions)
    setting = SETTINGS[key]  # the message states the declared range
    declared = f"in [{setting.low}, {setting.high}]" if setting.high is not None else f">= {setting.low}"
    assert declared in str(refused.value) and "None" not in str(refused.value)


@pytest.mark.parametrize("key, edge, past", [
    ("dataset.jpeg_quality", 100, 101),
    ("dataset.jpeg_quality", 1, 0),
    ("sample.seed", MAX_SEED, MAX_SEED + 1),
    ("sample.seed", 2**32 - 1, 2**32),
    ("label.threshold", 1.0, 1.0000001),
    ("label.threshold", -1.0, -1.0000001),
    ("label.threshold", 0.0, 1.5),
])
def test_hand_listed_edges(composed, key, edge, past):
    _validate(composed["smoke"], key, edge)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _validate(composed["smoke"], key, past)


def test_the_table_declares_upper_bounds_and_the_edges_reach_every_bounded_key(composed):
    keys = {key for key, *_ in _edges()}
    assert {"dataset.jpeg_quality", "sample.seed", "boundary.seed", "sampling.seed"} <= keys
    assert sum(side == "high" for _, side, *_ in _edges()) >= 4
    for key in keys:
        _selection(composed, key)


@pytest.mark.parametrize("key", [key for key, setting in SETTINGS.items() if setting.check is not None])
def test_every_settings_own_check_runs(composed, key):
    bad = REFUSED_BY_CHECK[SETTINGS[key].check.__qualname__]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _validate(_selection(composed, key), key, bad)


def test_or_default_falls_back_only_for_null_and_empty():
    register_resolvers()
    for value, expected in ((None, "fallback"), ("", "fallback"), ("runs/a", "runs/a"), (0, 0)):
        node = OmegaConf.create({"value": value, "out": "${or_default:${value},fallback}"})
        assert node.out == expected


def test_a_setting_that_does_not_resolve_is_refused_naming_the_missing_key(composed):
    with pytest.raises(ConfigError, match=r"sample\.batch_size: .*gan\.no_such_key"):
        _validate(composed["smoke"], "sample.batch_size", "${gan.no_such_key}")
