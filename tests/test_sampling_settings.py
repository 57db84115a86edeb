"""The sampling, truncation, label-pool and identity-control settings are checked before any network loads, in one
line each."""

import pytest
from hydra import compose, initialize_config_dir

from exfacegan.config import validate_config
from exfacegan.errors import ConfigError
from exfacegan.run import CONFIG_DIR
from exfacegan.stages.generate import GenerateSpec
from exfacegan.stages.offsets import OffsetSpec


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "logger=none", *overrides])


def test_the_defaults_are_the_paper_codes_sampling_per_backbone(tmp_path):
    cfg = _compose(f"run_dir={tmp_path}")
    validate_config(cfg)
    spec = GenerateSpec.from_config(cfg)
    assert spec.offsets.mirror and spec.offsets.on_no_face == "redraw" and spec.truncation.at == "render"
    assert spec.offsets.attempts_per_class == 3 * spec.offsets.per_class
    assert cfg.label.pool_size is None
    gan_control = GenerateSpec.from_config(_compose("gan=gan_control_small"))
    assert gan_control.truncation.at == "sample" and gan_control.truncation.cutoff is None
    assert OffsetSpec(on_no_face="drop", max_attempts=90).attempts_per_class == OffsetSpec().per_class


@pytest.mark.parametrize("override, words", [
    ("sampling.on_no_face=skip", "sampling.on_no_face must be one of ['redraw', 'drop'], got 'skip'"),
    ("sampling.max_attempts=5", "sampling.max_attempts must be an integer >= sampling.per_class"),
    ("sampling.max_attempts=true", "sampling.max_attempts must be an integer"),
    ("sampling.max_attempts=7.5", "sampling.max_attempts must be an integer"),
    ("sampling.mirror=sometimes", "sampling.mirror must be true or false"),
    ("sampling.per_class=0", "sampling.per_class must be an integer >= 1"),
    ("sampling.seed=-1", "sampling.seed must be an integer in [0, 4294967295]"),
    ("sampling.max_off=far", "sampling.max_off must be a finite number"),
    ("sampling.min_off=4.0", "need 0 <= sampling.min_off <= sampling.max_off, got 4.0 and 3.0"),
    ("gan.truncation.at=synthesis", "gan.truncation.at must be one of render, sample"),
    ("gan.truncation.cutoff=4", None),  # fine for at=render (the smoke GAN)
    ("label.pool_size=1", "label.pool_size must be an integer >= 2 or null"),
    ("label.pool_size=257", "label.pool_size=257 must be at most sample.num_samples=256"),
    ("label.pool_size=abc", "label.pool_size must be an integer >= 2 or null"),
    ("label.pool_size=11", "label.num_references=12 is more than label.pool_size=11"),
    ("label.pool_size=12", None),
    ("references.max_similarity=1.5", "references.max_similarity must be null or a cosine similarity in [-1, 1]"),
    ("references.max_similarity=close", "references.max_similarity must be null or a cosine similarity"),
    ("references.max_similarity=-1", "references.max_similarity=-1 accepts no code"),
    ("filter.min_reference_similarity=true", "filter.min_reference_similarity must be null or a cosine similarity"),
    ("filter.max_cross_similarity=-2", "filter.max_cross_similarity must be null or a cosine similarity"),
    ("sampling.both_sides=false", None),
    ("filter.max_cross_similarity=0.3", None),
    ("references.max_similarity=0.4", None),
    ("references.max_real_similarity=0.5", "references.max_real_similarity needs references.real_gallery"),
    ("references.max_real_similarity=2", "references.max_real_similarity must be null or a cosine similarity"),
    ("references.real_gallery=/no/such/faces", "references.real_gallery is set but references.max_real_similarity"),
])
def test_bad_settings_give_one_line_before_any_network(override, words, tmp_path):
    cfg = _compose(override, f"run_dir={tmp_path}")
    if words is None:
        validate_config(cfg)
        return
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert str(error.value).startswith(words) and "\n" not in str(error.value)


def test_the_real_gallery_must_exist_before_any_network(tmp_path):
    bound = "references.max_real_similarity=0.5"
    with pytest.raises(ConfigError, match="references.real_gallery=/no/such/faces does not exist"):
        validate_config(_compose(bound, "references.real_gallery=/no/such/faces", f"run_dir={tmp_path}"))
    validate_config(_compose(bound, f"references.real_gallery={tmp_path}", f"run_dir={tmp_path}"))


def test_truncating_at_sampling_needs_one_w_for_every_layer(tmp_path):
    cfg = _compose("gan=gan_control_small", "gan.truncation.cutoff=4", f"run_dir={tmp_path}")
    with pytest.raises(ConfigError, match="at=sample truncates the one stored w, so gan.truncation.cutoff must be null"):
        validate_config(cfg)


@pytest.mark.parametrize("overrides, words", [
    (["sampling.pose.yaw_range=[-30,30]"], "sampling.pose needs an aligner that finds facial landmarks (align=mtcnn"),
    (["align=mtcnn", "sampling.pose.yaw_range=[-30,30]"], None),
    (["align=dlib", "sampling.pose.yaw_range=[-30,30]"], None),
    (["align=mtcnn", "align@label_align=none", "sampling.pose.yaw_range=[-30,30]"],
     "sampling.pose needs an aligner that finds facial landmarks (label_align=mtcnn"),
    (["align=mtcnn", "sampling.pose.yaw_range=[30,-30]"], "sampling.pose.yaw_range needs -90 <= low < high <= 90"),
    (["align=mtcnn", "sampling.pose.yaw_range=[-100,30]"], "sampling.pose.yaw_range needs -90 <= low < high <= 90"),
    (["align=mtcnn", "sampling.pose.yaw_range=[10,10]"], "sampling.pose.yaw_range needs -90 <= low < high <= 90"),
    (["align=mtcnn", "sampling.pose.yaw_range=[-30]"], "sampling.pose.yaw_range must be null or [low, high]"),
    (["align=mtcnn", "sampling.pose.yaw_range=wide"], "sampling.pose.yaw_range must be null or [low, high]"),
    (["align=mtcnn", "+sampling.pose.pitch_range=[-5,5]"], "unknown setting sampling.pose.pitch_range"),
    (["gan=gan_control_small", "sampling.pose.yaw_range=[-30,30]"], None),  # the controller: no landmarks needed
    (["gan=gan_control_small", "sampling.pose.yaw_range=[-30.5,30]"],
     "with gan=gan_control sampling.pose.yaw_range is the orientation controller's yaw range and takes whole degrees"),
    (["gan=gan_control_small", "sampling.pose.yaw_range=[-30,95]"], "sampling.pose.yaw_range needs -90 <= low < high"),
])
def test_pose_variation_settings_are_checked_before_any_network(overrides, words, tmp_path):
    cfg = _compose(*overrides, f"run_dir={tmp_path}")
    if words is None:
        validate_config(cfg)
        assert GenerateSpec.from_config(cfg).offsets.pose.yaw_range == (-30.0, 30.0)
        return
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert str(error.value).startswith(words) and "\n" not in str(error.value)


@pytest.mark.parametrize("settings, words", [
    ({"seed": -1}, "sampling.seed must be an integer >= 0, got -1"),
    ({"seed": 1.0}, "sampling.seed must be an integer"),
    ({"per_class": 0}, "sampling.per_class must be an integer >= 1"),
    ({"max_off": float("nan")}, "must be finite numbers"),
    ({"max_off": float("inf")}, "must be finite numbers"),
    ({"min_off": True}, "must be finite numbers"),
    ({"min_off": -0.5}, "need 0 <= sampling.min_off"),
    ({"min_off": 31.0}, "need 0 <= sampling.min_off <= sampling.max_off"),
    ({"both_sides": 1}, "sampling.both_sides must be true or false"),
])
def test_the_offset_spec_refuses_on_its_own_what_the_config_check_refuses(settings, words):
    """OffsetSpec is built outside validate_config too (the offset study, the generate stage's tests): its own
    rules, without the settings table in front of them."""
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        OffsetSpec(**settings)
    assert OffsetSpec(seed=0, min_off=0.0, max_off=0.0).max_off == 0.0
