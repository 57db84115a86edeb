"""Every impossible setting ends `python -m exfacegan.run` (and the trainer, and the CLI) before any network is
built: exit status 2, exactly one stderr line `exfacegan: error: ...` naming the setting, no stage folder.

Most cases run in-process: the config is composed once per group selection (Hydra's compose API, module-scoped),
each case's settings are parsed as Hydra parses command-line overrides and set on a copy, and the copy goes through
the command line's own task function and error wrapper (`exfacegan.run.app` inside `run_hydra_app`), with
`Components._network` replaced by a function that fails the test if any network is built. Hydra's composition
errors run through `exfacegan.run.main` on sys.argv, and a few also as real subprocesses.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf

import exfacegan.app
import exfacegan.cli.main
import exfacegan.cli.report
import exfacegan.config
import exfacegan.run
from exfacegan.cli.entry import report_errors, run_hydra_app, user_error
from exfacegan.errors import CheckpointError, ConfigError, DataError

BASE = ["experiment=smoke", "logger=none", "cache_dir=null"]
STAGE_NAMES = {"sample", "label", "fit", "generate", "merge", "analyze"}

# override(s) -> a fragment the error line must contain. The cases first, then each setting's edges.
CASES = {
    "boundary.C=-1": "boundary.C",
    "boundary.solver=svc": "boundary.solver",
    "boundary.val_fraction=1": "boundary.val_fraction",
    "label.threshold=true": "label.threshold",
    "gan.truncation.center=w-avg": "gan.truncation.center",
    "gan.batch_size=0": "gan.batch_size",
    "sample.preview=0": "sample.preview",
    "sample.seed=-1": "sample.seed",
    "sampling.seed=-1": "sampling.seed",
    "boundary.seed=-1": "boundary.seed",
    "label.num_references=abc": "label.num_references",
    "device=cuda:64": "cuda:64",
    "dataset.jpeg_quality=500": "dataset.jpeg_quality",
    "gan.compile=yes": "gan.compile",
    "embedder.compile=1": "embedder.compile",
    # top level
    "stages=[]": "stages",
    "stages=[sample,train]": "train",
    "stages=[[sample]]": "stages",
    "overwrite=yes": "overwrite",
    "device=gpu": "gpu",
    "device=3": "device",
    "device=mps": "mps",
    # sample / fit / generate / analyze
    "sample.num_samples=1": "sample.num_samples",
    "sample.num_samples=2.5": "sample.num_samples",
    "sample.seed=true": "sample.seed",
    "sample.seed=4294967296": "sample.seed",
    "sample.batch_size=0": "sample.batch_size",
    "sample.preview=-3": "sample.preview",
    "sample.randomize_attributes=maybe": "sample.randomize_attributes",
    "fit.references_per_chunk=0": "fit.references_per_chunk",
    "generate.shard=-1": "generate.shard",
    "generate.shard=1": "generate.shard",
    "generate.num_shards=0": "generate.num_shards",
    "generate.references_per_chunk=0": "generate.references_per_chunk",
    "analyze.max_impostor_pairs=0": "analyze.max_impostor_pairs",
    "analyze.grid_identities=0": "analyze.grid_identities",
    "analyze.grid_images=-1": "analyze.grid_images",
    # gan
    "gan.batch_size=1.5": "gan.batch_size",
    "gan.noise_mode=constant": "gan.noise_mode",
    "gan.precision=fp8": "gan.precision",
    "gan.truncation.psi=nan": "gan.truncation.psi",
    "gan.truncation.psi=abc": "gan.truncation.psi",
    "gan.truncation.cutoff=-1": "gan.truncation.cutoff",
    "gan.truncation.center=null": "gan.truncation.center",
    # embedder, judge, align
    "analyze.batch_size=0": "analyze.batch_size",
    "analyze.num_workers=-1": "analyze.num_workers",
    "embedder.precision=half": "embedder.precision",
    "embedder=dlib embedder.network.num_jitters=-1": "embedder.network.num_jitters",
    "embedder=dlib embedder.network.padding=-0.5": "embedder.network.padding",
    "embedder@analyze.judge=iresnet_small analyze.judge.precision=half": "analyze.judge.precision",
    "embedder@filter.judge=iresnet_small filter.judge.compile=yes": "filter.judge.compile",
    "align.template=arcface_shift9": "align.template",
    "align.size=0": "align.size",
    "align=dlib align.detector=cnn2": "align.detector",
    "align=dlib align.upsample=-1": "align.upsample",
    "align=dlib align.detect_size=0": "align.detect_size",
    "align=dlib align.min_score=inf": "align.min_score",
    # label
    "label.threshold=1.5": "label.threshold",
    "label.threshold=-1.01": "label.threshold",
    "label.threshold=mean": "label.threshold",
    "label.num_references=0": "label.num_references",
    "label.num_references=257": "label.num_references",
    "label.chunk_size=0": "label.chunk_size",
    # boundary, for each solver
    "boundary.C=0": "boundary.C",
    "boundary.C=inf": "boundary.C",
    "boundary.val_fraction=-0.1": "boundary.val_fraction",
    "boundary.margin=-0.1": "boundary.margin",
    "boundary.scaling=std": "boundary.scaling",
    "boundary.balance=1": "boundary.balance",
    "boundary.space=both": "boundary.space",
    "boundary.order=random": "boundary.order",
    "boundary.min_per_class=0": "boundary.min_per_class",
    "boundary.on_degenerate=ignore": "boundary.on_degenerate",
    "boundary.tol=0": "boundary.tol",
    "boundary.max_iter=0": "boundary.max_iter",
    "boundary.n_jobs=0": "boundary.n_jobs",
    "boundary.n_jobs=-2": "boundary.n_jobs",
    "boundary=batched boundary.device=cuda:64": "boundary.device=cuda:64",
    "boundary=batched boundary.chunk_size=0": "boundary.chunk_size",
    "boundary=ridge boundary.memory_budget_gb=0": "boundary.memory_budget_gb",
    "boundary=logistic boundary.C=abc": "boundary.C",
    # sampling, dataset, logger
    "sampling.per_class=0": "sampling.per_class",
    "sampling.min_off=-1": "sampling.min_off",
    "sampling.min_off=5": "sampling.min_off",
    "sampling.max_off=nan": "sampling.max_off",
    "sampling.both_sides=2": "sampling.both_sides",
    "sampling.include_reference=yes": "sampling.include_reference",
    "dataset.image_format=gif": "dataset.image_format",
    "dataset.jpeg_quality=0": "dataset.jpeg_quality",
    "logger=wandb logger.mode=live": "logger.mode",
    # embedders and aligners added with the paper's aligner and the ONNX models
    "embedder=onnx embedder.path=arcface_r50_webface600k embedder.std=0": "embedder.std must be a number or three",
    "embedder=onnx embedder.path=arcface_r50_webface600k embedder.mean=[1,2]": "embedder.mean must be a number or three",
    "embedder=onnx embedder.path=/no/such/model.onnx": "embedder.network.path=/no/such/model.onnx does not exist",
    "align=mtcnn align.thresholds=[0.6,0.7]": "MTCNN thresholds must be three probabilities",
    "align=mtcnn align.weights=/no/such/folder": "MTCNN weights pnet.pt, rnet.pt, onet.pt missing in /no/such/folder",
    "sampling.on_no_face=skip": "sampling.on_no_face",
    "label.pool_size=1": "label.pool_size",
    "label.num_references=20 label.pool_size=10": "label.num_references=20 is more than label.pool_size=10",
}

HYDRA_CASES = {
    "label.treshold=0.3": "unknown setting label.treshold (did you mean label.threshold?)",
    "lable.threshold=0.3": "did you mean label.threshold?",
    "gan.truncation.centre=zero": "did you mean gan.truncation.center?",
    "gan=stylegan4": "gan=stylegan4 is not an option of gan",
    "boundary=svn": "did you mean svm?",
    "stages=[sample": "cannot parse the override 'stages=[sample'",
}


@pytest.fixture
def no_networks(monkeypatch):
    def refuse(self, node):
        raise AssertionError(f"a network was built: {node.get('_target_')}")

    monkeypatch.setattr(exfacegan.app.Components, "_network", refuse)


@pytest.fixture(scope="module")
def composed():
    """`composed(overrides)`: the config the command line would compose from BASE + overrides. Hydra composes once
    per selection of config-group options; the other overrides are parsed as Hydra parses them and set on a copy."""
    parser = OverridesParser.create()
    selections = {}

    def config(overrides: list[str]):
        parsed = parser.parse_overrides([*BASE, *overrides])
        groups = tuple(o.input_line for o in parsed if (exfacegan.run.CONFIG_DIR / o.key_or_group.split("@")[0]).is_dir())
        if groups not in selections:  # Hydra is initialised only while composing: the command-line cases need it free
            GlobalHydra.instance().clear()  # whatever an in-process command line left behind
            with initialize_config_dir(config_dir=str(exfacegan.run.CONFIG_DIR), version_base="1.3"):
                selections[groups] = compose("config", overrides=list(groups))
        cfg = copy.deepcopy(selections[groups])
        for override in parsed:
            if override.input_line not in groups:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
        return cfg

    exfacegan.config.register_resolvers()
    return config


def run_composed(cfg, capsys) -> tuple[object, list[str]]:
    """Exit status and stderr lines of the command line's task function on `cfg`, inside its error wrapper."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_hydra_app(lambda: exfacegan.run.app(cfg))
    return stopped.value.code, capsys.readouterr().err.splitlines()


def run_in_process(argv: list[str], monkeypatch, capsys) -> tuple[object, list[str]]:
    """Exit status and stderr lines of `python -m exfacegan.run <argv>`, run in this process."""
    monkeypatch.setattr(sys, "argv", ["run.py", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        exfacegan.run.main()
    return stopped.value.code, capsys.readouterr().err.splitlines()


def assert_one_line(status: object, lines: list[str], fragment: str, prog: str = "exfacegan") -> None:
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    assert fragment in lines[0], lines[0]


def assert_no_stage(run: Path) -> None:
    if run.is_dir():
        left = [p.name for p in run.iterdir() if p.name.removesuffix(".partial") in STAGE_NAMES]
        assert left == [], left


@pytest.mark.parametrize("overrides", list(CASES))
def test_refused_before_any_network_in_one_line(overrides, composed, tmp_path, capsys, no_networks):
    run = tmp_path / "run"
    status, lines = run_composed(composed([f"run_dir={run}", *overrides.split()]), capsys)
    assert_one_line(status, lines, CASES[overrides])
    assert_no_stage(run)


@pytest.mark.parametrize("key", ["run_dir", "cache_dir"])
def test_a_folder_setting_naming_an_existing_file_is_refused(key, composed, tmp_path, capsys, no_networks):
    existing = tmp_path / "a_file"
    existing.write_text("not a folder")
    settings = {"run_dir": str(tmp_path / "run"), "cache_dir": "null", key: str(existing)}
    status, lines = run_composed(composed([f"{k}={v}" for k, v in settings.items()]), capsys)
    assert_one_line(status, lines, str(existing))
    assert existing.read_text() == "not a folder"


def test_a_single_stage_name_is_a_one_element_list(composed, tmp_path, capsys, no_networks):
    """`stages=label` runs the label stage only (which then misses its sample stage), not the letters l, a, b..."""
    run = tmp_path / "run"
    status, lines = run_composed(composed([f"run_dir={run}", "stages=label"]), capsys)
    assert_one_line(status, lines, "no finished 'sample' stage")
    assert_no_stage(run)


@pytest.mark.parametrize("override", list(HYDRA_CASES))
def test_hydra_errors_name_the_closest_key_or_option(override, tmp_path, monkeypatch, capsys, no_networks):
    status, lines = run_in_process([*BASE, f"run_dir={tmp_path / 'run'}", override], monkeypatch, capsys)
    assert_one_line(status, lines, HYDRA_CASES[override])
    assert not (tmp_path / "run").exists()


def test_hydra_full_error_keeps_hydras_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run.py", *BASE, f"run_dir={tmp_path / 'run'}", "label.treshold=0.3"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigCompositionException, match="label.treshold"):
        exfacegan.run.main()
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


def test_a_bug_while_handling_a_user_error_keeps_its_traceback(tmp_path, monkeypatch):
    def buggy(cfg):
        try:
            raise ConfigError("a user error")
        except ConfigError:
            return {}["a bug in the handler"]

    monkeypatch.setattr(exfacegan.app, "run_pipeline", buggy)
    monkeypatch.setattr(sys, "argv", ["run.py", *BASE, f"run_dir={tmp_path / 'run'}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(KeyError, match="a bug in the handler"):
        exfacegan.run.main()
    assert "HYDRA_FULL_ERROR" not in os.environ


def _raised(error: BaseException, cause: BaseException | None = None, context: BaseException | None = None):
    error.__cause__, error.__context__ = cause, context
    return error


def test_only_our_errors_or_hydra_wrapping_them_are_user_errors():
    ours = CheckpointError("bad checkpoint")
    assert user_error(ours) is ours
    assert user_error(_raised(InstantiationException("Error in call to target"), cause=ours)) is ours
    assert user_error(_raised(KeyError("bug"), context=ours)) is None
    assert user_error(_raised(RuntimeError("bug"), cause=ours)) is None
    assert user_error(_raised(InstantiationException("Error in call to target"), cause=KeyError("bug"))) is None


def _no_faces() -> None:
    raise DataError("no faces")


def test_report_errors_exit_status_and_cleanup(capsys):
    cleaned = []
    assert report_errors(lambda: 0) == 0
    assert report_errors(lambda: None) == 0
    assert report_errors(_no_faces, cleanup=lambda: cleaned.append(1)) == 2
    assert capsys.readouterr().err.splitlines() == ["exfacegan: error: no faces"]
    assert cleaned == [1]
    with pytest.raises(ZeroDivisionError):
        report_errors(lambda: 1 / 0, cleanup=lambda: cleaned.append(2))
    assert cleaned == [1]


def _cli_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    faces = tmp_path / "faces" / "id0"
    faces.mkdir(parents=True)
    existing = tmp_path / "a_file"
    existing.write_text("x")
    folder = str(tmp_path / "faces")
    return {
        "device": ([folder, "--device", "cuda:64"], "--device cuda:64"),
        "batch size": ([folder, "--batch-size", "0"], "--batch-size"),
        "impostor pairs": ([folder, "--max-impostor-pairs", "0"], "--max-impostor-pairs"),
        "workers": ([folder, "--num-workers", "-1"], "--num-workers"),
        "out is a file": ([folder, "--out", str(existing)], str(existing)),
        "missing folder": ([str(tmp_path / "nowhere")], "does not exist"),
        "input is a file": ([str(existing)], "is not a folder"),
    }


@pytest.mark.parametrize("case", ["device", "batch size", "impostor pairs", "workers", "out is a file",
                                  "missing folder", "input is a file"])
def test_cli_refuses_before_embedding(case, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("an embedder was built")

    monkeypatch.setattr(exfacegan.cli.report, "build_embedder", refuse)
    monkeypatch.setattr(exfacegan.cli.report, "run_embedder", refuse)
    argv, fragment = _cli_cases(tmp_path)[case]
    capsys.readouterr()
    assert exfacegan.cli.main.main(["report", *argv]) == 2
    assert_one_line(2, capsys.readouterr().err.splitlines(), fragment)


def _subprocess(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("module, args, fragment, prog", [
    ("exfacegan.run", ["label.treshold=0.3"], "did you mean label.threshold?", "exfacegan"),
    ("exfacegan.run", ["gan=stylegan4"], "gan=stylegan4 is not an option of gan", "exfacegan"),
    ("exfacegan.train", ["data.root=.", "recipe=smok"], "recipe=smok is not an option of recipe (did you mean smoke?)",
     "exfacegan.train"),
    ("exfacegan.train", ["data.rot=."], "unknown setting data.rot (did you mean data.root?)", "exfacegan.train"),
])
def test_hydra_errors_from_the_command_line(module, args, fragment, prog, tmp_path):
    result = _subprocess(module, *args, cwd=tmp_path)
    assert_one_line(result.returncode, result.stderr.splitlines(), fragment, prog)
    assert "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("center", ["w-avg", "mean", None])
def test_truncation_itself_refuses_an_unknown_centre(center):
    from exfacegan.gans.latent import Truncation

    with pytest.raises(ConfigError, match="gan.truncation.center"):
        Truncation(psi=0.7, center=center)
    assert Truncation(psi=0.7, center="zero").center == "zero"
