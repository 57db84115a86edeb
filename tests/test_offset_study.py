"""`exfacegan offsets`: the offset study on a smoke run, against renders made here with the generator directly,
the run's own dataset images, and the page's numbers against its JSON."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from test_report import MetricSpans, assert_opens_in_chromium

from exfacegan.cli.main import main as cli_main
from exfacegan.stages.offset_study import parse_offsets

SMALL = ["experiment=smoke", "logger=none", "cache_dir=null", "sample.num_samples=64", "label.num_references=6",
         "sampling.per_class=2", "boundary=ridge"]
STUDY = ["--references", "4", "--max-off", "0:4.5:1.5", "--draws", "2", "--strips", "2", "--device", "cpu"]


def _one_error_line(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("exfacegan: error: "), err
    assert all(fragment in err[0] for fragment in fragments), err[0]
    return err[0]


# --- offsets and errors, on a hand-made run folder (no network is built) -------------------------------------

def test_parse_offsets_hand_worked():
    np.testing.assert_allclose(parse_offsets("0:60:5"), np.arange(0, 61, 5))
    np.testing.assert_allclose(parse_offsets("0:1:0.3"), [0, 0.3, 0.6, 0.9])
    np.testing.assert_allclose(parse_offsets("0:1:0.1"), np.round(np.arange(11) / 10, 9))  # 1.0 despite float noise
    np.testing.assert_allclose(parse_offsets("2:2:1"), [2])
    np.testing.assert_allclose(parse_offsets("0:6:2", include=3.0), [0, 2, 3, 4, 6])
    np.testing.assert_allclose(parse_offsets("0:6:2", include=4.0), [0, 2, 4, 6])


def test_below_min_off_every_dimension_moves_by_m_and_at_max_off_the_draws_are_the_datasets():
    from exfacegan.stages.offset_study import offset_spec
    from exfacegan.stages.offsets import Draw, OffsetSpec, draw_codes

    run = OffsetSpec(min_off=2.0, max_off=5.0, seed=3)
    latents, normals = np.zeros((2, 4)), np.tile([[1.0, -1.0, 0.5, 0.0]], (2, 1))
    draw = [Draw(3, 1, 1, 0, 0)]
    codes, _ = draw_codes(draw, latents, normals, offset_spec(run, 1.0, draws=1))
    np.testing.assert_allclose(codes[0], [1.0, -1.0, 0.5, 0.0])  # u = 1 everywhere: U(min(2, 1), 1)
    codes, _ = draw_codes(draw, latents, normals, offset_spec(run, 5.0, draws=1))
    u = np.random.default_rng([3, 1, 0, 1]).uniform(2.0, 5.0, 4)  # the dataset's draw 0 of reference 1
    np.testing.assert_allclose(codes[0], (u * normals[1]).astype(np.float32))


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch) -> Path:
    """A run folder with the smoke config and a finished fit stage of 3 boundaries, 2 valid; building any network
    fails the test, so every error below is raised before the heavy work."""
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=smoke", "logger=none"])
    run = tmp_path / "run"
    (run / "fit").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / "fit" / "fingerprint.json").write_text(json.dumps({"fingerprint": "0"}))
    np.savez(run / "fit" / "boundaries.npz", normals=np.eye(3, 64, dtype=np.float32),
             reference_latents=np.zeros((3, 64), np.float32), valid=np.array([True, False, True]),
             references=np.arange(3))

    def no_network(*args, **kwargs):
        raise AssertionError("a network was built before the settings were checked")

    monkeypatch.setattr("exfacegan.rebuild.rebuild_network", no_network)
    return run


def test_defaults_all_valid_references_up_to_16_and_offsets_up_to_twice_max_off(fake_run: Path):
    from exfacegan.cli.main import build_parser
    from exfacegan.cli.offsets import _plan

    plan = _plan(build_parser().parse_args(["offsets", str(fake_run), "--device", "cpu"]))
    assert plan.references.tolist() == [0, 2]  # the valid ones
    np.testing.assert_allclose(plan.offsets, np.arange(13) / 2)  # smoke: max_off 3 -> 0:6:0.5
    assert plan.out == fake_run / "offsets" and plan.spec.batch_size == 16


@pytest.mark.parametrize("argv, fragments", [
    (["--max-off", "0:60"], ["--max-off", "start:stop:step"]),
    (["--max-off", "a:b:c"], ["--max-off"]),
    (["--max-off=-1:6:1"], ["--max-off"]),
    (["--max-off", "5:1:1"], ["start <= stop"]),
    (["--max-off", "0:6:0"], ["step > 0"]),
    (["--references", "3"], ["--references 3", "only 2 valid boundaries"]),
    (["--references", "0"], ["--references must be at least 1"]),
    (["--draws", "0"], ["--draws must be at least 1"]),
    (["--device", "tpu:x"], ["device="]),
])
def test_bad_settings_are_one_error_line_before_any_network(fake_run: Path, capsys, argv, fragments):
    assert cli_main(["offsets", str(fake_run), "--references", "2", *argv]) == 2
    _one_error_line(capsys, *fragments)
    assert sorted(p.name for p in fake_run.iterdir()) == ["config.yaml", "fit"]


def test_missing_run_no_fit_and_bad_out_are_one_error_line(fake_run: Path, tmp_path: Path, capsys):
    assert cli_main(["offsets", str(tmp_path / "nowhere")]) == 2
    _one_error_line(capsys, "nowhere", "not a directory")
    shutil.rmtree(fake_run / "fit")
    assert cli_main(["offsets", str(fake_run), "--references", "1"]) == 2
    _one_error_line(capsys, "no finished 'fit' stage")
    (tmp_path / "empty").mkdir()
    assert cli_main(["offsets", str(tmp_path / "empty")]) == 2
    _one_error_line(capsys, "no config.yaml")


def test_out_must_not_be_a_file_or_a_foreign_folder(fake_run: Path, tmp_path: Path, capsys):
    (tmp_path / "file.txt").write_text("keep me")
    assert cli_main(["offsets", str(fake_run), "--references", "1", "--out", str(tmp_path / "file.txt")]) == 2
    _one_error_line(capsys, "existing file")
    assert (tmp_path / "file.txt").read_text() == "keep me"
    assert cli_main(["offsets", str(fake_run), "--references", "1", "--out", str(fake_run)]) == 2
    _one_error_line(capsys, "other contents")


# --- the study on a smoke run -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A smoke run with 6 boundaries and a generated dataset (2 images per class, the reference in slot 0)."""
    root = tmp_path_factory.mktemp("offsets")
    result = subprocess.run([sys.executable, "-m", "exfacegan.run", *SMALL, f"run_dir={root / 'run'}"],
                            cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def study(smoke_run: Path) -> dict:
    assert cli_main(["offsets", str(smoke_run), *STUDY]) == 0
    return json.loads((smoke_run / "offsets" / "offsets.json").read_text())


class Oracle:
    """The run's networks built from its config.yaml, and renders made directly with the generator's synthesis:
    ws = w_avg + psi (w - w_avg) on every layer (the smoke config's truncation), faces rounded to uint8."""

    def __init__(self, run: Path) -> None:
        cfg = OmegaConf.load(run / "config.yaml")
        self.cfg = cfg
        self.generator = instantiate(cfg.gan.network).eval()
        self.aligner = instantiate(cfg.align).eval()
        self.embedder = instantiate(cfg.embedder.network).eval()
        with np.load(run / "fit" / "boundaries.npz") as npz:
            self.latents, self.normals = npz["reference_latents"], npz["normals"]
        assert cfg.gan.truncation.cutoff is None and cfg.gan.truncation.center == "w_avg"

    @torch.no_grad()
    def embed_codes(self, codes: np.ndarray) -> torch.Tensor:
        g, psi = self.generator, self.cfg.gan.truncation.psi
        w = torch.from_numpy(codes.astype(np.float32))
        w = g.mapping.w_avg + psi * (w - g.mapping.w_avg)
        images = g.synthesis(w[:, None].repeat(1, g.num_ws, 1), noise_mode="const")
        faces, found = self.aligner(images)
        assert found.all()
        return self.embed_faces((faces * 127.5 + 128).clamp(0, 255).to(torch.uint8))

    @torch.no_grad()
    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        e = self.embedder(faces).float()
        return e / e.norm(dim=1, keepdim=True)

    def code(self, reference: int, attempt: int, magnitude: float, side: str) -> np.ndarray:
        spec = self.cfg.sampling
        rng = np.random.default_rng([spec.seed, reference, 0, attempt + 1])  # mirrored: one stream for both sides
        u = rng.uniform(min(spec.min_off, magnitude), magnitude, self.latents.shape[1])
        sign = -1.0 if side == "same" else 1.0
        return self.latents[reference] + sign * u * self.normals[reference]


@pytest.mark.slow
def test_offset_zero_is_the_reference_and_the_curve_summarises_the_similarities(study: dict):
    assert study["offsets"] == [0.0, 1.5, 3.0, 4.5] and study["max_off"] == 3.0 and study["max_off_index"] == 2
    assert study["references"] == [0, 1, 2, 3] and study["sides"] == ["same", "other"] and study["draws"] == 2
    for side in study["sides"]:
        values = np.array(study["similarity"][side], dtype=float)  # [K, draws, M]
        assert values.shape == (4, 2, 4)
        np.testing.assert_allclose(values[..., 0], 1.0, atol=1e-5)  # the reference itself, through uint8
        assert (values[..., -1] < 0.9999).all()
        flat = values.reshape(-1, 4)
        curve = study["curve"][side]
        np.testing.assert_allclose(curve["mean"], flat.mean(0), rtol=1e-12)
        np.testing.assert_allclose(curve["p10"], [np.percentile(c, 10) for c in flat.T], rtol=1e-12)
        np.testing.assert_allclose(curve["p90"], [np.percentile(c, 90) for c in flat.T], rtol=1e-12)
        assert curve["faces"] == [8] * 4
        assert study["at_max_off"][side] == {key: curve[key][2] for key in ("mean", "p10", "p90")}


@pytest.mark.slow
def test_similarities_match_renders_made_directly_with_the_generator(study: dict, smoke_run: Path):
    oracle = Oracle(smoke_run)
    points = [(r, t, i, side) for r in (0, 3) for t in (0, 1) for i in (1, 3) for side in ("same", "other")]
    references = oracle.embed_codes(oracle.latents[[0, 3]])
    codes = np.stack([oracle.code(r, t, study["offsets"][i], side) for r, t, i, side in points])
    embeddings = oracle.embed_codes(codes)
    for (r, t, i, side), embedding in zip(points, embeddings):
        expected = float(embedding @ references[0 if r == 0 else 1])
        assert study["similarity"][side][study["references"].index(r)][t][i] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_the_max_off_point_is_what_the_dataset_holds(study: dict, smoke_run: Path):
    """At m = sampling.max_off, draw t is the dataset's draw t: compare with the run's own saved images."""
    oracle = Oracle(smoke_run)
    with open(smoke_run / "generate" / "manifest.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["attempt"]) in (0, 1) and int(row["reference"]) < 4]
    assert len(rows) == 4 * 3  # per reference: draw 1 in class 2r (slot 0 is the reference), draws 0, 1 in 2r+1
    faces = torch.stack([torch.from_numpy(np.array(Image.open(smoke_run / "generate" / "dataset" / row["path"])))
                         .permute(2, 0, 1) for row in rows])
    references = oracle.embed_codes(oracle.latents[:4])
    for row, embedding in zip(rows, oracle.embed_faces(faces)):
        r, t = int(row["reference"]), int(row["attempt"])
        expected = float(embedding @ references[r])
        assert study["similarity"][row["side"]][r][t][study["max_off_index"]] == pytest.approx(expected, abs=1e-4)


def _lookup(payload, key: str):
    for part in key.split("."):
        payload = payload[int(part)] if isinstance(payload, list) else payload[part]
    return payload


@pytest.mark.slow
def test_the_page_shows_the_numbers_of_the_json(study: dict, smoke_run: Path):
    parser = MetricSpans()
    parser.feed((smoke_run / "offsets" / "offsets.html").read_text())
    shown = {key: (value, text) for key, value, text in parser.found}
    assert len(shown) == len(parser.found)
    m = len(study["offsets"])
    assert {f"curve.{s}.{k}.{i}" for s in ("same", "other") for k in ("mean", "p10", "p90", "faces")
            for i in range(m)} <= set(shown)
    assert {"max_off", "at_max_off.same.mean", "at_max_off.other.mean", "draws", "num_references"} <= set(shown)
    for key, (value, text) in shown.items():
        expected = _lookup(study, key)
        assert value == repr(expected), key
        if key.startswith(("curve.", "at_max_off.")) and isinstance(expected, float):
            assert text == f"{expected:.4f}", key
        else:
            assert float(text) == expected, key
    assert parser.links and all(link.startswith("data:image/png;base64,") for link in parser.links)
    assert sorted(p.name for p in (smoke_run / "offsets").iterdir()) == ["offsets.html", "offsets.json", "offsets.png"]
    assert not (smoke_run / "offsets.partial").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_the_page_opens_in_headless_chromium(study: dict, smoke_run: Path, tmp_path: Path):
    assert_opens_in_chromium(smoke_run / "offsets" / "offsets.html", tmp_path / "shot.png", width=1100, height=1400)


@pytest.mark.slow
def test_rerun_replaces_the_study_and_logs_the_curve(study: dict, smoke_run: Path, tmp_path: Path, monkeypatch):
    logged = []

    class Recording:
        def log_metrics(self, metrics, stage):
            logged.append((stage, metrics))

        def log_image(self, name, path):
            logged.append((name, Path(path).name))

        def finish(self):
            logged.append("finish")

    monkeypatch.setattr("exfacegan.loggers.build_logger", lambda node, **run: Recording())
    out = tmp_path / "again"
    out.mkdir()
    (out / "offsets.json").write_text("{}")  # an earlier study's folder is replaced
    (out / "stale.txt").write_text("")
    assert cli_main(["offsets", str(smoke_run), *STUDY, "--out", str(out)]) == 0
    again = json.loads((out / "offsets.json").read_text())
    assert again["similarity"] == study["similarity"]  # seeded: the same renders
    assert not (out / "stale.txt").exists()
    steps = [metrics for stage, metrics in logged[:-3]]
    assert [s["offset"] for s in steps] == study["offsets"]
    assert [s["other_mean"] for s in steps] == study["curve"]["other"]["mean"]
    assert logged[-3] == ("offsets", {f"{side}_{key}_at_max_off": study["at_max_off"][side][key]
                                      for side in ("same", "other") for key in ("mean", "p10", "p90")})
    assert logged[-2:] == [("offsets/curve", "offsets.png"), "finish"]


@pytest.mark.slow  # W&B starts its service process
def test_a_run_that_logged_to_wandb_gets_an_offline_wandb_run(smoke_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("generate", "offsets"))
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.logger = {"_target_": "exfacegan.loggers.WandbLogger", "project": "exfacegan", "mode": "offline",
                  "entity": None, "tags": []}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert cli_main(["offsets", str(run), "--references", "1", "--max-off", "0:3:3", "--device", "cpu"]) == 0
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert sum(path.stat().st_size for path in runs[0].glob("run-*.wandb")) > 0
    assert list(runs[0].glob("files/media/images/offsets/curve_*.png"))
