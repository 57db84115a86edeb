"""The generation-time identity filter: which faces it keeps, and that its re-draws are reproducible."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from toys import ToyAligner, ToyEmbedder, ToyGenerator

from exfacegan.gans.latent import to_uint8
from exfacegan.stages.generate import GenerateSpec, finalize, generate
from exfacegan.stages.identity_filter import IdentityFilter, IdentityFilterSpec, identity_filter_tests
from exfacegan.stages.offsets import Draw, OffsetSpec


class PixelJudge(nn.Module):
    """Reads a face's embedding from its first two pixels (uint8, centred at 128)."""

    def forward(self, faces):
        return faces[:, 0, 0, :2].float() - 128


def _face(angle_deg: float) -> torch.Tensor:
    face = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    face[0, 0, :2] = torch.tensor([128 + round(100 * np.cos(np.deg2rad(angle_deg))),
                                   128 + round(100 * np.sin(np.deg2rad(angle_deg)))])
    return face


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    u, v = (x[0, 0, :2].double().numpy() - 128 for x in (a, b))
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_the_filter_keeps_exactly_the_faces_within_both_bounds():
    # Reference 0's images: class 0 at 0°, class 1 at 90°; reference 1's: 180° and 270°.
    anchors = {0: (0, 90), 1: (180, 270)}
    rendered: list[list[int]] = []

    def render(references):
        rendered.append(references.tolist())
        return torch.stack([_face(a) for r in references.tolist() for a in anchors[r]]), [True] * 2 * len(references)

    spec = IdentityFilterSpec(min_reference_similarity=0.6, max_cross_similarity=0.3)
    tests = IdentityFilter(spec, PixelJudge(), render).tests()
    assert [t.name for t in tests] == ["reference_similarity", "cross_similarity"]
    angles = [(0, 0, 10), (0, 0, 50), (0, 0, 60), (0, 1, 70), (0, 1, 100), (1, 0, 200), (1, 1, 200), (1, 1, 300)]
    draws = [Draw(2 * r + side, r, side, k, k) for k, (r, side, _) in enumerate(angles)]
    faces = torch.stack([_face(a) for *_, a in angles])
    own = [_cosine(f, _face(anchors[r][side])) for (r, side, _), f in zip(angles, faces)]
    other = [_cosine(f, _face(anchors[r][1 - side])) for (r, side, _), f in zip(angles, faces)]
    expected_own = [s >= 0.6 for s in own]
    expected_other = [s <= 0.3 for s in other]
    assert min(abs(s - 0.6) for s in own) > 1e-3 and min(abs(s - 0.3) for s in other) > 1e-3
    assert expected_own != [True] * 8 and expected_other != [True] * 8  # both bounds reject something here
    assert tests[0](faces, draws).tolist() == expected_own
    assert tests[1](faces, draws).tolist() == expected_other
    assert rendered == [[0], [1]]  # each reference's images rendered and judged once, on their own

    no_face = IdentityFilter(spec, PixelJudge(), lambda refs: (torch.stack([_face(0), _face(90)]), [True, False]))
    verdicts = [t(faces[:2], draws[:2]).tolist() for t in no_face.tests()]
    assert verdicts == [[True, True], [False, False]]  # the other side's image is missing: nothing to vouch with


def _boundaries(r=4, d=6, seed=1):
    rng = np.random.default_rng(seed)
    normals = rng.standard_normal((r, d))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return rng.standard_normal((r, d)).astype(np.float32), normals.astype(np.float32)


def _judged(generator, aligner, judge, codes: np.ndarray) -> np.ndarray:
    """The judge's unit embeddings of these codes rendered as the documented rendering does (no truncation)."""
    ws = torch.from_numpy(codes.astype(np.float32))[:, None].repeat(1, generator.num_ws, 1)
    with torch.no_grad():
        faces, _ = aligner(generator.synthesis(ws))
        embeddings = judge(to_uint8(faces)).double().numpy()
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def _oracle_similarities(rows, w, n, offsets: OffsetSpec) -> dict[tuple, tuple[float, float]]:
    """(reference, side, attempt) -> similarity to its own class's reference image and to the other's, from the
    documented seeding and reference images (w; w + (min_off + max_off)/2 * n)."""
    generator, aligner, judge = ToyGenerator(), ToyAligner(), ToyEmbedder()
    centre = (offsets.min_off + offsets.max_off) / 2
    anchors = {r: _judged(generator, aligner, judge, np.stack([w[r], w[r] + centre * n[r]])) for r in range(len(w))}
    out = {}
    for row in rows:
        r, side, attempt = int(row["reference"]), int(row["side"] == "other"), int(row["attempt"])
        u = np.random.default_rng([offsets.seed, r, 0, attempt + 1]).uniform(offsets.min_off, offsets.max_off, w.shape[1])
        face = _judged(generator, aligner, judge, (w[r] + (1 if side else -1) * u * n[r])[None])[0]
        out[(r, side, attempt)] = (float(face @ anchors[r][side]), float(face @ anchors[r][1 - side]))
    return out


def _run(out: Path, filter_spec: IdentityFilterSpec, **kw):
    generator, aligner = ToyGenerator(), ToyAligner()
    w, n = _boundaries(d=generator.w_dim)
    spec = GenerateSpec(offsets=OffsetSpec(per_class=3, max_off=1.0, max_attempts=8), batch_size=4,
                        **{"references_per_chunk": 2, **kw})
    tests = identity_filter_tests(filter_spec, ToyEmbedder(), generator, aligner, w, n, spec, "cpu")
    return generate(out, generator, aligner, reference_latents=w, normals=n, spec=spec, accept=tests)


def _rows(root: Path) -> list[dict]:
    return [row for record in sorted((root / "progress").glob("*.csv")) for row in csv.DictReader(open(record))]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _midway(values: np.ndarray, quantile: float) -> float:
    """A bound between two observed similarities near this quantile, so that none sits on it."""
    values = np.unique(values)
    i = min(int(quantile * len(values)), len(values) - 2)
    return float(values[i] + values[i + 1]) / 2


@pytest.fixture(scope="module")
def bounds(tmp_path_factory) -> IdentityFilterSpec:
    """Bounds that each reject about a third of the first draws of every class."""
    offsets = OffsetSpec(per_class=3, max_off=1.0, max_attempts=8)
    rows = [{"reference": r, "side": side, "attempt": a} for r in range(4) for side in ("same", "other")
            for a in range(8)]
    sims = np.array(list(_oracle_similarities(rows, *_boundaries(d=ToyGenerator().w_dim), offsets).values()))
    return IdentityFilterSpec(min_reference_similarity=_midway(sims[:, 0], 0.3),
                              max_cross_similarity=_midway(sims[:, 1], 0.7))


def test_every_render_is_kept_exactly_when_its_similarities_pass_and_failed_ones_are_redrawn(bounds, tmp_path):
    artifacts = _run(tmp_path, bounds)
    rows = _rows(tmp_path)
    w, n = _boundaries(d=ToyGenerator().w_dim)
    oracle = _oracle_similarities(rows, w, n, OffsetSpec(per_class=3, max_off=1.0))
    for row in rows:
        own, other = oracle[(int(row["reference"]), int(row["side"] == "other"), int(row["attempt"]))]
        assert min(abs(own - bounds.min_reference_similarity), abs(other - bounds.max_cross_similarity)) > 1e-5
        expected = ("reference_similarity" if own < bounds.min_reference_similarity
                    else "cross_similarity" if other > bounds.max_cross_similarity else "")
        assert row["rejected"] == expected, row
    stats = json.loads(artifacts.stats.read_text())
    reasons = [row["rejected"] for row in rows]
    assert stats["rejected_reference_similarity"] == reasons.count("reference_similarity") > 0
    assert stats["rejected_cross_similarity"] == reasons.count("cross_similarity") > 0
    assert stats["redrawn"] > 0 and stats["images"] == reasons.count("") == len(list(artifacts.dataset.rglob("*.png")))
    per_class = {f"{c:05d}": sum(1 for row in rows if int(row["class"]) == c and not row["rejected"])
                 / sum(1 for row in rows if int(row["class"]) == c) for c in range(8)}
    assert stats["accepted_fraction_per_class"] == pytest.approx(per_class)
    assert stats["accepted_fraction"] == pytest.approx(reasons.count("") / len(rows))
    assert stats["accepted_fraction_class_min"] == pytest.approx(min(per_class.values()))


def test_filtered_redraws_do_not_depend_on_chunking_sharding_or_resuming(bounds, tmp_path):
    whole = _run(tmp_path / "a", bounds)
    reference = (_files(whole.dataset), whole.manifest.read_bytes(), whole.stats.read_bytes())
    again = _run(tmp_path / "b", bounds, references_per_chunk=3)
    assert (_files(again.dataset), again.manifest.read_bytes(), again.stats.read_bytes()) == reference
    for shard in (1, 0):
        assert _run(tmp_path / "s", bounds, shard=shard, num_shards=2) is None
    merged = finalize(tmp_path / "s")
    assert (_files(merged.dataset), merged.manifest.read_bytes(), merged.stats.read_bytes()) == reference
    _run(tmp_path / "k", bounds)
    min((tmp_path / "k" / "progress").glob("*.csv")).unlink()  # killed before the first chunk was recorded
    resumed = _run(tmp_path / "k", bounds)
    assert (_files(resumed.dataset), resumed.manifest.read_bytes(), resumed.stats.read_bytes()) == reference


@pytest.mark.slow
def test_the_report_shows_the_filters_counts_and_acceptance(bounds, tmp_path):
    from exfacegan.stages.analyze import analyze_run

    stats = json.loads(_run(tmp_path / "run" / "generate", bounds).stats.read_text())
    metrics = analyze_run(tmp_path / "run", tmp_path / "analyze", ToyEmbedder(), grid_images=0)
    page = (tmp_path / "analyze" / "report.html").read_text()
    for key in ("rejected_reference_similarity", "rejected_cross_similarity", "accepted_fraction",
                "accepted_fraction_class_min", "accepted_fraction_class_median"):
        assert metrics[key] == stats[key]
        shown = str(stats[key]) if isinstance(stats[key], int) else f"{100 * stats[key]:.2f}%"
        assert f'data-metric="{key}" data-value="{stats[key]!r}">{shown}</span>' in page
    assert metrics["accepted_fraction_per_class"] == stats["accepted_fraction_per_class"]
    assert 'alt="Identity filter: faces kept per identity"' in page
    assert (tmp_path / "analyze" / "accepted_fraction_histogram.png").stat().st_size > 0


KILLABLE = """
import sys, time
from pathlib import Path
import toys
from test_identity_filter import IdentityFilterSpec, _run

judge = toys.ToyEmbedder.forward
toys.ToyEmbedder.forward = lambda self, faces: (time.sleep(0.05), judge(self, faces))[1]  # time to kill it
_run(Path(sys.argv[1]), IdentityFilterSpec(float(sys.argv[2]), float(sys.argv[3])))
"""


@pytest.mark.slow
def test_a_filtered_generate_killed_mid_chunk_resumes_to_the_uninterrupted_dataset(bounds, tmp_path):
    from test_end_to_end import _kill_when

    whole = _run(tmp_path / "whole", bounds)
    reference = (_files(whole.dataset), whole.manifest.read_bytes(), whole.stats.read_bytes())
    out = tmp_path / "killed"
    command = [sys.executable, "-c", KILLABLE, str(out), repr(bounds.min_reference_similarity),
               repr(bounds.max_cross_similarity)]
    records = out / "progress"

    def progress() -> int:  # chunks recorded, and a second chunk's first image written
        second = [p for p in (out / "dataset").rglob("*.png") if int(p.parent.name) >= 4] if out.is_dir() else []
        return len(list(records.glob("*.csv"))) + bool(second) if records.is_dir() else 0

    _kill_when(command, Path(__file__).parent, progress, 2)
    assert len(list(records.glob("*.csv"))) == 1 and not (out / "manifest.csv").exists()
    resumed = _run(out, bounds)
    assert (_files(resumed.dataset), resumed.manifest.read_bytes(), resumed.stats.read_bytes()) == reference


def test_the_reference_images_codes_and_attribute_seeds_follow_the_documented_definition():
    from exfacegan.stages.identity_filter import anchor_codes

    w, n = _boundaries(d=6)
    spec = GenerateSpec(offsets=OffsetSpec(min_off=2.0, max_off=6.0, seed=7))
    codes, seeds = anchor_codes(np.array([3, 1]), w, n, spec)
    np.testing.assert_allclose(codes, np.stack([w[3], w[3] + 4.0 * n[3], w[1], w[1] + 4.0 * n[1]]), rtol=1e-6)
    # GAN-Control attributes: streams 2 + side of attempt -1, i.e. default_rng([seed, r, 2 + side, 0]).
    expected = [np.random.default_rng([7, r, 2 + side, 0]).integers(2**62) for r in (3, 1) for side in (0, 1)]
    assert seeds.tolist() == expected
    one_side = GenerateSpec(offsets=OffsetSpec(min_off=2.0, max_off=6.0, seed=7, both_sides=False))
    codes, seeds = anchor_codes(np.array([3]), w, n, one_side)
    np.testing.assert_array_equal(codes, w[3:4])
    assert seeds.tolist() == expected[:1]
