"""The leakage audit against real photographs (../shared/golden/mtcnn_images.npz: two people), aligned by our MTCNN
and embedded by dlib's descriptor, a real FR model: a planted real face and its mirror must be flagged, random
classes must not; the search against brute force; every gallery format; malformed input in one line."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exfacegan.cli.main import main as cli_main
from exfacegan.data.gallery import load_gallery
from exfacegan.errors import ConfigError, DataError
from exfacegan.metrics.nearest import best_per_class, nearest
from exfacegan.stages.audit import impostor_threshold

# Real side: other photographs of the two people than the planted one.
REAL = {"astronaut": ["astronaut_bicubic_0.5x", "astronaut_rot-10", "astronaut_gray_as_rgb",
                      "astronaut_1024_to_150_nearest"],
        "grace_hopper": ["grace_hopper", "grace_hopper_bicubic_1.5x", "grace_hopper_rot+10", "grace_hopper_jpeg_q30",
                         "grace_hopper_1024_to_150_nearest"]}
PLANTED = "astronaut"
RANDOM_CLASSES, PER_CLASS = 5, 3


def test_chunked_search_finds_what_brute_force_finds():
    rng = np.random.default_rng(0)
    queries, gallery = rng.standard_normal((37, 16)), rng.standard_normal((101, 16))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    found = nearest(queries.astype(np.float32), gallery.astype(np.float32), query_chunk=8, gallery_chunk=10)
    products = queries @ gallery.T
    np.testing.assert_array_equal(found.index, products.argmax(1))
    np.testing.assert_allclose(found.score, products.max(1), atol=1e-6)
    classes = rng.integers(0, 7, len(queries))
    classes[classes == 3] = 2  # class 3 left empty
    best = best_per_class(found, classes, 7)
    for c in range(7):
        members = np.flatnonzero(classes == c)
        if not len(members):
            assert best.score[c] == -np.inf and best.index[c] == -1
            continue
        winner = members[products[members].max(1).argmax()]
        assert best.query[c] == winner and best.index[c] == products[winner].argmax()


def test_threshold_is_the_impostor_quantile_and_the_highest_score_when_few():
    scores = np.arange(1, 20001, dtype=np.float32) / 20000  # 1/20000 .. 1
    assert impostor_threshold(scores, 1e-4) == pytest.approx(19999 / 20000)  # 2 of 20,000 at or above: 1e-4
    assert impostor_threshold(scores[:50], 1e-4) == pytest.approx(50 / 20000)
    with pytest.raises(DataError):
        impostor_threshold(np.zeros(0, np.float32), 1e-4)


@pytest.fixture(scope="module")
def faces(golden_dir) -> dict[str, np.ndarray]:
    """uint8 [112, 112, 3] aligned faces of the golden photographs, by name."""
    from exfacegan.align import MTCNNAligner
    from exfacegan.align.mtcnn_nets import mtcnn_weights_dir
    from exfacegan.errors import CheckpointError

    try:
        mtcnn_weights_dir()
    except CheckpointError as error:
        pytest.skip(str(error))
    images = np.load(golden_dir / "mtcnn_images.npz")
    aligner = MTCNNAligner(min_face_size=40)
    wanted = [PLANTED, *(name for names in REAL.values() for name in names)]
    out = {}
    for index, name in enumerate(images["names"]):
        if str(name) in wanted:
            aligned, found = aligner(torch.from_numpy(images[f"img_{index:02d}"]).permute(2, 0, 1)[None])
            assert found[0]
            out[str(name)] = ((aligned[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    return out


def _save(path: Path, face: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face).save(path)


@pytest.fixture(scope="module")
def folders(faces, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit")
    for identity, names in REAL.items():
        for name in names:
            _save(root / "real" / identity / f"{name}.png", faces[name])
    _save(root / "synthetic" / "00000" / "a.png", faces[PLANTED])
    _save(root / "synthetic" / "00000" / "b.png", faces[PLANTED][:, ::-1].copy())
    rng = np.random.default_rng(1)
    for c in range(1, RANDOM_CLASSES + 1):
        for k in range(PER_CLASS):
            _save(root / "synthetic" / f"{c:05d}" / f"{k}.png", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    return {"real": root / "real", "synthetic": root / "synthetic", "root": root}


@pytest.fixture(scope="module")
def dlib_embedder():
    from exfacegan.embedders import DlibEmbedder

    return DlibEmbedder()


def _embed(embedder, images: list[np.ndarray]) -> np.ndarray:
    return embedder(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)).numpy().astype(np.float64)


def _audit(folders: dict[str, Path], against: Path | str, out: str, *extra: str) -> dict:
    code = cli_main(["audit", str(folders["synthetic"]), "--against", str(against), "--out", str(folders["root"] / out),
                     "--cache-dir", str(folders["root"] / "cache"), *extra])
    assert code == 0
    return json.loads((folders["root"] / out / "audit.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("impostors", ["real", "synthetic"])
def test_the_planted_real_face_is_flagged_and_random_classes_are_not(folders, faces, dlib_embedder, impostors):
    audit = _audit(folders, folders["real"], f"out_{impostors}", "--impostors", impostors)
    flagged = {row["class"] for row in audit["per_class"] if row["flagged"]}
    assert flagged == {"00000"}
    top = audit["per_class"][0]
    assert top["class"] == "00000" and top["real_identity"] == "astronaut"
    # The planted class's score by brute force over dlib's own embeddings of the same images.
    planted = _embed(dlib_embedder, [faces[PLANTED], faces[PLANTED][:, ::-1].copy()])
    real = _embed(dlib_embedder, [faces[name] for names in REAL.values() for name in names])
    assert top["similarity"] == pytest.approx((planted @ real.T).max(), abs=1e-5)
    mean = planted.mean(0) / np.linalg.norm(planted.mean(0))
    assert top["mean_similarity"] == pytest.approx((mean @ real.T).max(), abs=1e-5)
    assert audit["classes"] == RANDOM_CLASSES + 1 and audit["real_identities"] == 2


@pytest.mark.slow
def test_every_gallery_format_gives_the_same_nearest_identity(folders, faces, dlib_embedder):
    from exfacegan.data.recordio import write_face_records
    from exfacegan.train.evaluation import write_bin

    root = folders["root"]
    names = [name for group in REAL.values() for name in group]
    labels = [identity for identity, group in REAL.items() for _ in group]
    flat = root / "flat"
    for name in names:
        _save(flat / f"{name}.png", faces[name])

    def png(face: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="PNG")
        return buffer.getvalue()

    (root / "rec").mkdir()
    write_face_records(root / "rec", [[png(faces[n]) for n in group] for group in REAL.values()])
    # .bin: pairs (astronaut, astronaut) marked same, then grace_hopper pairs; 8 images.
    pairs = np.stack([faces[n] for n in names[:4] + names[4:8]])
    write_bin(root / "real.bin", pairs, [True, True, True, True])
    np.savez(root / "real.npz", embeddings=_embed(dlib_embedder, [faces[n] for n in names]).astype(np.float32),
             labels=np.array(labels))
    reference = _audit(folders, folders["real"], "fmt_folder", "--impostors", "real")["per_class"][0]
    astronaut = {"astronaut", *REAL["astronaut"]}
    for against, identities, count in ((flat, astronaut, 9), (root / "rec", {"0"}, 2),
                                       (root / "real.bin", {"bin#0", "bin#1"}, 4), (root / "real.npz", astronaut, 2)):
        audit = _audit(folders, against, f"fmt_{against.name}", "--impostors", "real")
        top = audit["per_class"][0]
        assert audit["real_identities"] == count, against
        assert top["class"] == "00000" and top["similarity"] == pytest.approx(reference["similarity"], abs=2e-3), against
        assert top["real_identity"] in identities, against


@pytest.mark.slow
def test_gallery_embeddings_are_cached_by_content(folders, dlib_embedder, tmp_path, monkeypatch):
    first = load_gallery(folders["real"], dlib_embedder, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def refuse(images):
        raise AssertionError("embedded again instead of reading the cache")

    monkeypatch.setattr(dlib_embedder, "forward", refuse)
    again = load_gallery(folders["real"], dlib_embedder, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.embeddings, again.embeddings)
    changed = tmp_path / "changed"
    shutil.copytree(folders["real"], changed)
    next(changed.rglob("*.png")).write_bytes((folders["root"] / "synthetic" / "00001" / "0.png").read_bytes())
    with pytest.raises(AssertionError, match="embedded again"):
        load_gallery(changed, dlib_embedder, cache_dir=tmp_path)


def _one_error_line(capsys, argv: list[str], fragment: str) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("exfacegan: error:") and fragment in err[0], err


def test_malformed_galleries_are_refused_in_one_line(tmp_path, capsys):
    synthetic = tmp_path / "synthetic" / "00000"
    synthetic.mkdir(parents=True)
    Image.new("RGB", (112, 112)).save(synthetic / "a.png")
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(tmp_path / "nolabels.npz", embeddings=np.ones((3, 4), np.float32))
    np.savez(tmp_path / "nan.npz", embeddings=np.full((3, 4), np.nan, np.float32), labels=np.arange(3))
    (tmp_path / "broken.bin").write_bytes(b"\x80\x04not a pickle")
    (tmp_path / "empty").mkdir()
    base = ["audit", str(tmp_path / "synthetic"), "--embedder", "dlib", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--against"]
    _one_error_line(capsys, [*base, str(tmp_path / "missing")], "does not exist")
    _one_error_line(capsys, [*base, str(tmp_path / "notes.txt")], "cannot read")
    _one_error_line(capsys, [*base, str(tmp_path / "nolabels.npz")], "labels")
    _one_error_line(capsys, [*base, str(tmp_path / "nan.npz")], "finite")
    _one_error_line(capsys, [*base, str(tmp_path / "broken.bin")], "broken.bin: refused to load")
    _one_error_line(capsys, [*base, str(tmp_path / "empty")], "no images")
    _one_error_line(capsys, [*base, str(tmp_path / "nolabels.npz"), "--fmr", "2"], "--fmr")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_page_shows_the_numbers_of_audit_json_and_opens_in_chromium(folders):
    from test_report import _screenshot_module, assert_opens_in_chromium

    audit = _audit(folders, folders["real"], "page", "--impostors", "real", "--top", "3")
    page = (folders["root"] / "page" / "audit.html").read_text()
    checker = _screenshot_module()
    assert checker.check_numbers(page, audit) == []
    shown = {key for key, _, _ in _tagged(checker, page)}
    assert {"threshold", "flagged", "fmr", "per_class.0.similarity", "per_class.2.mean_similarity"} <= shown
    wrong = dict(audit, threshold=audit["threshold"] - 0.1)
    assert any(problem.startswith("threshold:") for problem in checker.check_numbers(page, wrong))
    assert page.count('class="pair"') == 3 and page.count("data:image/png;base64,") == 1 + 2 * 3
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    assert_opens_in_chromium(folders["root"] / "page" / "audit.html", folders["root"] / "shot.png", width=1000, height=1400)


def _tagged(checker, page: str) -> list[tuple[str, str, str]]:
    parser = checker.TaggedNumbers()
    parser.feed(page)
    return parser.numbers


def test_references_closer_than_the_bound_to_a_real_identity_are_left_out(tmp_path):
    from exfacegan.stages.label import label

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((12, 8)).astype(np.float32)
    found = np.ones(12, bool)
    found[1] = False
    real = np.array([0.1, 0.9, 0.95, 0.2, 0.5, 0.81, 0.3, 0.0, 0.1, 0.1, 0.1, 0.1], np.float32)
    artifacts = label(tmp_path, embeddings, found, num_references=4, real_similarity=real, max_real_similarity=0.8)
    # found codes 0, 2..11; those at or below 0.8: 0, 3, 4, 6, 7, ...; the first four
    np.testing.assert_array_equal(np.load(artifacts.labels)["references"], [0, 3, 4, 6])
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["references_left_out_real"] == 2 and stats["references_nearest_real_max"] == pytest.approx(0.5)
    distinct = label(tmp_path / "d", embeddings, found, num_references=3, max_similarity=0.99, real_similarity=real,
                     max_real_similarity=0.8)
    assert not set(np.load(distinct.labels)["references"]) & {2, 5}
    with pytest.raises(ConfigError, match="leaves no code"):
        label(tmp_path / "e", embeddings, found, real_similarity=np.ones(12, np.float32), max_real_similarity=0.5)


@pytest.mark.parametrize("references, fragment", [
    ({"max_real_similarity": 0.5}, "needs references.real_gallery"),
    ({"real_gallery": "{gallery}"}, "max_real_similarity is null"),
    ({"max_real_similarity": 0.5, "real_gallery": "{missing}"}, "does not exist"),
    ({"max_real_similarity": 1.5, "real_gallery": "{gallery}"}, "cosine similarity"),
    ({"max_real_similarity": 0.5, "real_gallery": "{text}"}, "is not a gallery"),
])
def test_the_real_bound_is_checked_before_anything_loads(tmp_path, references, fragment):
    from omegaconf import OmegaConf

    from exfacegan.stages.identity_filter import check_real_bound

    (tmp_path / "g.npz").write_bytes(b"")
    (tmp_path / "g.txt").write_text("x")
    values = {k: str(v).format(gallery=tmp_path / "g.npz", missing=tmp_path / "none", text=tmp_path / "g.txt")
              if isinstance(v, str) else v for k, v in references.items()}
    with pytest.raises(ConfigError, match=fragment):
        check_real_bound(OmegaConf.create({"references": values}))
    check_real_bound(OmegaConf.create({"references": {"max_real_similarity": 0.5, "real_gallery": str(tmp_path / "g.npz")}}))


def test_the_dataset_card_summarises_the_audit_and_the_left_out_references(tmp_path):
    from exfacegan.data.card import dataset_card

    (tmp_path / "audit").mkdir()
    (tmp_path / "label").mkdir()
    (tmp_path / "config.yaml").write_text("embedder:\n  network: {_target_: exfacegan.embedders.DlibEmbedder}\n")
    row = {"class": "00007", "similarity": 0.93125, "real_identity": "someone", "real_index": 3, "image": "x.png",
           "mean_similarity": 0.9, "mean_real_identity": "someone", "flagged": True}
    audit = {"gallery": "/data/lfw.bin", "real_identities": 5749, "real_images": 13233, "embedder": "DlibEmbedder",
             "flagged": 1, "classes": 20, "threshold": 0.91234, "fmr": 1e-4, "impostor_source": "synthetic: sampled",
             "nearest_real_max": 0.93125, "nearest_real_median": 0.5, "nearest_real_mean_max": 0.9,
             "threshold_resolved": True, "chance_flags_bound": 0.5,
             "per_class": [row, {**row, "class": "00001", "similarity": 0.2, "flagged": False}]}
    (tmp_path / "audit" / "audit.json").write_text(json.dumps(audit))
    (tmp_path / "label" / "stats.json").write_text(json.dumps({"max_real_similarity": 0.6, "references_left_out_real": 4}))
    card = dataset_card(tmp_path, fmt="folder", labels=np.zeros(3, np.int64), image_encoding="png", usage="", files={})
    assert "1 of 20 identities above the threshold 0.9123 (FMR 0.0001" in card
    assert "- identity `00007` ~ real `someone`: 0.9313" in card and "00001" not in card
    assert "max_real_similarity=0.6: 4" in card and "| nearest_real_median | 0.5 |" in card


@pytest.mark.parametrize("logger, logged", [("{_target_: exfacegan.loggers.WandbLogger, mode: offline}", True),
                                            ("{_target_: exfacegan.loggers.NullLogger}", False)])
def test_the_audit_goes_to_wandb_only_when_the_run_logged_there(tmp_path, monkeypatch, logger, logged):
    import exfacegan.loggers as loggers
    from exfacegan.cli.audit import _log_to_wandb

    calls = []

    class Recorder(loggers.NullLogger):
        def log_metrics(self, metrics, stage):
            calls.append((stage, metrics))

        def log_image(self, name, path):
            calls.append((name, path))

    real_build = loggers.build_logger
    monkeypatch.setattr(loggers, "build_logger", lambda node, **run: Recorder() if "Wandb" in str(node._target_)
                        else real_build(node, **run))
    (tmp_path / "config.yaml").write_text(f"logger: {logger}\n")
    _log_to_wandb(tmp_path, tmp_path / "audit", {"flagged": 2, "threshold": 0.5, "gallery": "x", "per_class": []})
    assert bool(calls) == logged
    if logged:
        assert calls[0] == ("audit", {"flagged": 2, "threshold": 0.5})
        assert calls[1] == ("audit/nearest_real_histogram", tmp_path / "audit" / "nearest_real_histogram.png")


def test_the_report_counts_the_references_left_out_for_a_real_identity(tmp_path):
    from exfacegan.stages.analyze import analyze
    from test_report import _screenshot_module, write_identities
    from toys import ToyEmbedder

    write_identities(tmp_path / "faces", classes=3, per_class=3)
    stats = {"max_real_similarity": 0.6, "references_left_out_real": 4, "references_nearest_real_max": 0.55}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    metrics = analyze(tmp_path / "faces", tmp_path / "a", ToyEmbedder(), label_stats_path=tmp_path / "stats.json")
    assert {key: metrics[key] for key in stats} == stats
    page = (tmp_path / "a" / "report.html").read_text()
    assert 'data-metric="references_left_out_real" data-value="4"' in page
    assert _screenshot_module().check_numbers(page, metrics) == []
