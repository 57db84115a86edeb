import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_curve
from torch import nn

from exfacegan.cli.main import main as cli_main
from exfacegan.data.image_folder import ImageFolderDataset
from exfacegan.errors import DataError
from exfacegan.stages.analyze import analyze, analyze_run

CLASSES, PER_CLASS = 4, 4


class PatternEmbedder(nn.Module):
    """Mean colour of each image quadrant, centred and L2-normalised: identities are colour patterns."""

    embedding_dim = 12

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images.float() / 255.0 - 0.5, 2).flatten(1)
        return F.normalize(pooled, dim=1)


class RecordingLogger:
    def __init__(self) -> None:
        self.metrics, self.images = [], []

    def log_metrics(self, metrics, stage):
        self.metrics.append((stage, metrics))

    def log_image(self, name, path):
        self.images.append((name, Path(path)))


def write_identities(root: Path, classes: int = CLASSES, per_class: int = PER_CLASS, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    for cls in range(classes):
        quadrants = rng.integers(0, 256, size=(2, 2, 3))
        base = np.kron(quadrants, np.ones((size // 2, size // 2, 1)))
        folder = root / f"{cls:05d}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            image = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{cls:05d}_{k:03d}.png")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    dataset = run / "generate" / "dataset"
    write_identities(dataset)
    with open(run / "generate" / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "class", "reference", "side", "k", "attempt", "found", "rejected"])
        writer.writeheader()
        for cls in range(CLASSES):
            for k in range(PER_CLASS):
                writer.writerow({"path": f"{cls:05d}/{cls:05d}_{k:03d}.png", "class": cls, "reference": cls // 2,
                                 "side": "same" if cls % 2 == 0 else "other", "k": k, "attempt": k, "found": 1,
                                 "rejected": ""})
    (run / "generate" / "stats.json").write_text(json.dumps({"attempted": 20, "dropped": 4}))
    (run / "fit").mkdir()
    np.savez(run / "fit" / "boundaries.npz", normals=np.eye(3, 8, dtype=np.float32), intercepts=np.zeros(3),
             val_accuracy=np.array([0.9, 0.8, 0.1]), train_accuracy=np.array([0.95, 0.85, 0.2]),
             valid=np.array([True, True, False]))
    return run


class MetricSpans(HTMLParser):
    """Collects (data-metric, data-value, shown text) of every tagged number, and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.found, self.links, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if "data-metric" in attrs:
            self._open = [attrs["data-metric"], attrs["data-value"], ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag):
        if self._open is not None:
            self.found.append(tuple(self._open))
            self._open = None


def test_image_folder_lists_sorted_and_resizes(tmp_path: Path):
    write_identities(tmp_path / "data", classes=2, per_class=3, size=48)
    (tmp_path / "data" / "empty").mkdir()
    (tmp_path / "data" / "00000" / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path / "data", size=112)
    assert dataset.classes == ["00000", "00001"] and len(dataset) == 6
    assert [p.name for p in dataset.paths[:3]] == ["00000_000.png", "00000_001.png", "00000_002.png"]
    image, label = dataset[4]
    assert image.shape == (3, 112, 112) and image.dtype == torch.uint8 and label == 1


def test_image_folder_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "a" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path / "a")
    (tmp_path / "a" / "x" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        ImageFolderDataset(tmp_path / "a")[0]


def _decoded(paths: list[Path]) -> torch.Tensor:
    """uint8 [N, 3, 112, 112] of image files, decoded with Pillow here (not with the package's reader)."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            arrays.append(np.asarray(image if image.size == (112, 112) else image.resize((112, 112), Image.BILINEAR)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _dataset_files(root: Path) -> tuple[list[Path], np.ndarray]:
    """Every image of an image folder in sorted order, and its folder's number."""
    paths = sorted(root.glob("*/*.png"))
    return paths, np.array([int(path.parent.name) for path in paths])


def _exhaustive_scores(embeddings: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Every pair's cosine similarity with numpy: genuine, impostor, and both sides (classes 2r and 2r+1)."""
    first, second = np.triu_indices(len(classes), k=1)
    similarity = (embeddings.astype(np.float64) @ embeddings.T.astype(np.float64))[first, second]
    same = classes[first] == classes[second]
    siblings = ~same & (classes[first] // 2 == classes[second] // 2)
    return {"genuine": similarity[same], "genuine_class": classes[first][same], "impostor": similarity[~same],
            "both_sides": similarity[siblings]}


def _sklearn_metrics(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    """The report's definitions, from scikit-learn's ROC and numpy moments: EER at the threshold where FMR and
    FNMR are closest, FMRx the lowest FNMR with FMR <= 1/x, FDR and d' from the two means and variances."""
    truth = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    fmr, tpr, _ = roc_curve(truth, np.r_[genuine, impostor], drop_intermediate=False)
    fnmr = 1 - tpr
    crossing = np.argmin(np.abs(fnmr - fmr))
    spread = genuine.var() + impostor.var()
    return {"eer": (fmr[crossing] + fnmr[crossing]) / 2, "fmr100": fnmr[fmr <= 0.01].min(),
            "fmr1000": fnmr[fmr <= 0.001].min(), "fdr": (genuine.mean() - impostor.mean()) ** 2 / spread,
            "d_prime": abs(genuine.mean() - impostor.mean()) / np.sqrt(spread / 2),
            "genuine_mean": genuine.mean(), "impostor_mean": impostor.mean(), "genuine_std": genuine.std(),
            "impostor_std": impostor.std(), "genuine_pairs": len(genuine), "impostor_pairs": len(impostor)}


def _assert_metrics_of(metrics: dict, scores: dict[str, np.ndarray], tol: float) -> None:
    for key, expected in _sklearn_metrics(scores["genuine"], scores["impostor"]).items():
        assert metrics[key] == pytest.approx(expected, abs=tol), key
    assert metrics["both_sides_mean"] == pytest.approx(scores["both_sides"].mean(), abs=tol)
    for cls in np.unique(scores["genuine_class"]):
        expected = scores["genuine"][scores["genuine_class"] == cls].mean()
        assert metrics["per_class_genuine_mean"][f"{int(cls):05d}"] == pytest.approx(expected, abs=tol)


def test_one_decoder_reads_image_files_and_the_bytes_of_bin_entries(tmp_path: Path):
    from exfacegan.data.image_folder import decode_rgb, load_image
    from exfacegan.train.evaluation import read_bin, write_bin

    write_identities(tmp_path / "faces", classes=1, per_class=2, size=48)
    paths = sorted((tmp_path / "faces").glob("*/*.png"))
    expected = _decoded(paths)  # Pillow, resized to 112 with bilinear filtering
    assert torch.equal(torch.stack([load_image(path, 112) for path in paths]), expected)
    assert np.array_equal(decode_rgb(paths[0].read_bytes(), 112), expected[0].permute(1, 2, 0).numpy())
    small = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])
    write_bin(tmp_path / "pairs.bin", small, [True])
    images, issame = read_bin(tmp_path / "pairs.bin")
    assert torch.equal(images, expected) and issame.tolist() == [True]
    with pytest.raises(DataError, match="cannot read image bytes"):
        decode_rgb(b"not an image", 112)


def test_analyze_run_writes_metrics_figures_and_report(run_dir: Path, tmp_path: Path):
    out = tmp_path / "analysis"
    metrics = analyze_run(run_dir, out, PatternEmbedder(), batch_size=5, grid_identities=3, grid_images=2)

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for name in ("report.html", "score_histogram.png", "val_accuracy_histogram.png", "identity_grid.png",
                 "per_class_genuine_histogram.png"):
        assert (out / name).stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    with Image.open(out / "score_histogram.png") as figure:
        assert figure.format == "PNG"

    assert metrics["images"] == CLASSES * PER_CLASS and metrics["identities"] == CLASSES
    assert metrics["genuine_pairs"] == CLASSES * PER_CLASS * (PER_CLASS - 1) // 2
    assert metrics["both_sides_pairs"] == (CLASSES // 2) * PER_CLASS**2
    assert metrics["dropped_fraction"] == pytest.approx(0.2)
    assert metrics["boundaries"] == 3 and metrics["boundaries_valid"] == 2
    assert metrics["val_accuracy_mean"] == pytest.approx(0.85) and metrics["val_accuracy_min"] == pytest.approx(0.8)
    assert sorted(metrics["per_class_genuine_mean"]) == [f"{c:05d}" for c in range(CLASSES)]
    assert metrics["eer"] < 0.1  # the colour patterns separate

    # Oracle: the images decoded with Pillow, every pair scored with numpy, the metrics from scikit-learn.
    paths, classes = _dataset_files(run_dir / "generate" / "dataset")
    expected = _exhaustive_scores(PatternEmbedder()(_decoded(paths)).numpy(), classes)
    _assert_metrics_of(metrics, expected, tol=1e-6)
    raw = np.load(out / "scores.npz")  # the raw scores, as stored
    for key in ("genuine", "impostor", "both_sides"):
        np.testing.assert_allclose(np.sort(raw[key]), np.sort(expected[key]), atol=1e-6, err_msg=key)
    _assert_metrics_of(metrics, {key: raw[key].astype(np.float64) for key in raw.files}, tol=1e-12)


def test_the_analyze_runner_embeds_in_batches_of_analyze_batch_size_and_logs_what_analyze_returns(run_dir: Path):
    from hydra import compose, initialize_config_dir

    from exfacegan.app import Components, run_analyze
    from exfacegan.pipeline import RunDirectory
    from exfacegan.run import CONFIG_DIR

    class Recording(PatternEmbedder):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def forward(self, images):
            self.sizes.append(len(images))
            return super().forward(images)

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=smoke", "logger=none", "embedder@analyze.judge=dlib",
                                                       "analyze.batch_size=3", "analyze.grid_identities=2"])
    parts = Components(cfg, torch.device("cpu"))
    judge = parts._built["judge"] = Recording()  # stands in for the dlib judge the config names
    logger = RecordingLogger()
    out = run_dir / "analyze"
    run_analyze(cfg, RunDirectory(run_dir), out, parts, logger)

    assert judge.sizes == [3] * 5 + [1]  # 16 images
    metrics = json.loads((out / "metrics.json").read_text())
    assert [stage for stage, _ in logger.metrics] == ["analyze"]
    logged = logger.metrics[0][1]
    assert logged == {k: v for k, v in metrics.items() if not isinstance(v, (dict, str))}
    assert "eer" in logged and "per_class_genuine_mean" not in logged and "embedder" not in logged
    assert sorted(logger.images) == sorted((f"analyze/{p.stem}", p) for p in out.glob("*.png"))
    assert {name for name, _ in logger.images} >= {"analyze/score_histogram", "analyze/identity_grid"}


PERCENT_KEYS = {"eer", "fmr100", "fmr1000", "dropped_fraction", "val_accuracy_mean", "val_accuracy_median",
                "val_accuracy_min", "val_accuracy_max", "train_accuracy_mean"}


def _as_shown(key: str, value) -> str:
    """The page's convention, written out: error rates and accuracies as percentages with two decimals, other
    numbers with four, counts as they are, flags as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{100 * value:.2f}%" if key in PERCENT_KEYS else f"{value:.4f}"


def test_report_shows_the_numbers_of_metrics_json(run_dir: Path, tmp_path: Path):
    analyze_run(run_dir, tmp_path / "a", PatternEmbedder())
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    parser = MetricSpans()
    parser.feed((tmp_path / "a" / "report.html").read_text())

    shown = {key: (value, text) for key, value, text in parser.found}
    for key in ("eer", "fmr100", "fmr1000", "fdr", "d_prime", "dropped_fraction", "val_accuracy_mean",
                "per_class_genuine_min", "both_sides_mean", "images", "identities"):
        assert key in shown, key
    for key, (value, text) in shown.items():
        if key.startswith("per_class_genuine_mean."):
            expected = metrics["per_class_genuine_mean"][key.split(".", 1)[1]]
        else:
            expected = metrics[key]
        assert value == repr(expected), key
        assert text == _as_shown(key, expected), key
    others = [link for link in parser.links if not link.startswith("data:image/png;base64,")]
    assert parser.links and others == ["../run/generate/dataset/"]  # figures inline; one link: the dataset, relative


def test_analyze_plain_image_folder(tmp_path: Path):
    write_identities(tmp_path / "faces", classes=3, per_class=3)
    metrics = analyze(tmp_path / "faces", tmp_path / "out", PatternEmbedder(), max_impostor_pairs=10)
    assert metrics["impostor_pairs"] == 10 and metrics["impostor_sampled"] is True
    assert "both_sides_pairs" not in metrics and "boundaries" not in metrics and "faces_dropped" not in metrics
    assert "Identity boundaries" not in (tmp_path / "out" / "report.html").read_text()


def test_cli_report_on_dataset_folder(tmp_path: Path, capsys):
    write_identities(tmp_path / "faces", classes=3, per_class=2)
    assert cli_main(["report", str(tmp_path / "faces"), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["embedder"] == "DlibEmbedder" and metrics["images"] == 6
    assert "report:" in capsys.readouterr().out


def test_cli_report_reuses_the_run_embedder(run_dir: Path, capsys):
    (run_dir / "config.yaml").write_text(
        "embedder:\n  network:\n    _target_: exfacegan.embedders.random_iresnet_embedder\n"
        "    arch: [1, 1, 1, 1]\n    num_features: 16\n    seed: 0\n"
    )
    assert cli_main(["report", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["embedder"] == "IResNetEmbedder" and metrics["boundaries"] == 3


def test_cli_missing_path_is_one_error_line(tmp_path: Path, capsys):
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("exfacegan: error: ") and "nowhere" in err[0]


def test_cli_iresnet_needs_checkpoint(tmp_path: Path, capsys):
    write_identities(tmp_path / "faces", classes=2, per_class=2)
    assert cli_main(["report", str(tmp_path / "faces"), "--embedder", "iresnet50"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def _screenshot_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "pipelines" / "screenshot_report.py"
    spec = importlib.util.spec_from_file_location("screenshot_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshot_checker_catches_wrong_numbers_and_external_links(run_dir: Path, tmp_path: Path):
    check_numbers = _screenshot_module().check_numbers
    analyze_run(run_dir, tmp_path / "a", PatternEmbedder())
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    page = (tmp_path / "a" / "report.html").read_text()
    assert check_numbers(page, metrics) == []
    wrong = dict(metrics, fdr=metrics["fdr"] + 0.5)
    assert any(problem.startswith("fdr:") for problem in check_numbers(page, wrong))
    external = page.replace("</main>", '<img src="https://example.com/x.png"></main>')
    assert any("example.com" in problem for problem in check_numbers(external, metrics))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium(run_dir: Path, tmp_path: Path):
    analyze_run(run_dir, tmp_path / "a", PatternEmbedder())
    assert_opens_in_chromium(tmp_path / "a" / "report.html", tmp_path / "shot.png", width=900, height=1400)


def assert_opens_in_chromium(page: Path, shot: Path, *, width: int, height: int) -> None:
    assert _screenshot_module().screenshot(page, shot, width=width, height=height) == []
    with Image.open(shot) as image:
        assert image.size == (width, height)
        assert len(np.unique(np.asarray(image.convert("L")))) > 50  # the page rendered, not a blank canvas


@pytest.mark.slow
def test_the_app_judges_its_dataset_with_dlib_and_reports_the_metrics_of_its_scores(tmp_path: Path):
    import subprocess
    import sys

    from exfacegan.embedders.dlib_resnet import DlibEmbedder

    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "exfacegan.run", "experiment=smoke", "logger=none", "cache_dir=null",
         "sample.num_samples=48", "label.num_references=4", "sampling.per_class=4", "embedder@analyze.judge=dlib",
         f"run_dir={run}"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "analyze" / "metrics.json").read_text())
    assert metrics["embedder"] == "DlibEmbedder"

    # Oracle: dlib's descriptors of the written images, every pair scored with numpy, metrics from scikit-learn.
    paths, classes = _dataset_files(run / "generate" / "dataset")
    assert metrics["images"] == len(paths) == 32 and not metrics["impostor_sampled"]
    with torch.no_grad():
        descriptors = DlibEmbedder()(_decoded(paths)).numpy()
    assert descriptors.shape == (32, 128)  # dlib judged, not the run's 64-d iresnet
    expected = _exhaustive_scores(descriptors, classes)
    raw = np.load(run / "analyze" / "scores.npz")
    for key in ("genuine", "impostor", "both_sides"):
        np.testing.assert_allclose(np.sort(raw[key]), np.sort(expected[key]), atol=1e-5, err_msg=key)
    _assert_metrics_of(metrics, expected, tol=1e-5)
