import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from exfacegan.errors import ConfigError, DataError
from exfacegan.stages.generate import GenerateSpec, finalize, generate
from exfacegan.stages.offsets import OffsetSpec, draw_codes, first_draws
from toys import ToyAligner, ToyGenerator


def _boundaries(r=5, d=6, seed=1):
    rng = np.random.default_rng(seed)
    normals = rng.standard_normal((r, d))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return rng.standard_normal((r, d)).astype(np.float32), normals.astype(np.float32)


def _codes(w, n, references, spec):
    draws = first_draws(np.asarray(references), spec)
    codes, seeds = draw_codes(draws, w, n, spec)
    return codes, seeds, draws


def test_codes_move_along_the_normal_on_each_side():
    w, n = _boundaries()
    spec = OffsetSpec(per_class=20, min_off=0.5, max_off=2.0, both_sides=True, mirror=False)
    codes, seeds, draws = _codes(w, n, np.arange(5), spec)
    assert codes.shape == (5 * 2 * 20, 6) and len(draws) == len(codes) == len(seeds)
    for code, d in zip(codes, draws):
        delta = code - w[d.reference]
        u = delta / n[d.reference]
        sign = -1 if d.side == 0 else 1
        assert d.cls == 2 * d.reference + d.side
        assert np.all(sign * u >= 0.5 - 1e-4) and np.all(sign * u <= 2.0 + 1e-4)
        # the component along the normal has the expected sign: same side goes against n
        assert sign * float(delta @ n[d.reference]) > 0


def test_mirrored_sides_share_each_draw_and_independent_sides_do_not():
    w, n = _boundaries()
    mirrored, _, draws = _codes(w, n, [1, 3], OffsetSpec(per_class=4, max_off=2.0))
    same, other = mirrored[[d.side == 0 for d in draws]], mirrored[[d.side == 1 for d in draws]]
    refs = np.array([d.reference for d in draws if d.side == 0])
    np.testing.assert_allclose(same + other, 2 * w[refs], atol=1e-5)  # w - u*n and w + u*n, the same u
    independent, _, _ = _codes(w, n, [1, 3], OffsetSpec(per_class=4, max_off=2.0, mirror=False))
    np.testing.assert_array_equal(independent[[d.side == 0 for d in draws]], same)  # side 0 keeps stream 0
    assert np.abs(independent[[d.side == 1 for d in draws]] - other).min() > 0


def test_codes_of_a_reference_do_not_depend_on_its_neighbours():
    w, n = _boundaries()
    spec = OffsetSpec(per_class=4, include_reference=True, both_sides=False)
    all_codes, all_seeds, _ = _codes(w, n, np.arange(5), spec)
    one_codes, one_seeds, draws = _codes(w, n, [3], spec)
    np.testing.assert_array_equal(all_codes[12:16], one_codes)
    np.testing.assert_array_equal(all_seeds[12:16], one_seeds)
    np.testing.assert_allclose(one_codes[0], w[3])  # include_reference: image 000 is the reference
    assert [d.cls for d in draws] == [3] * 4


def _run(out: Path, *, drop_above=2.0, valid=None, **kw):
    generator = ToyGenerator()
    w, n = _boundaries(r=5, d=generator.w_dim)
    offsets = OffsetSpec(per_class=3, max_off=1.0, **{k: kw.pop(k) for k in ("on_no_face", "max_attempts") if k in kw})
    spec = GenerateSpec(offsets=offsets, batch_size=4, **{"references_per_chunk": 2, **kw})
    return generate(out, generator, ToyAligner(drop_above), reference_latents=w, normals=n, valid=valid, spec=spec)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_writes_one_folder_per_identity_and_a_manifest(tmp_path):
    artifacts = _run(tmp_path)
    classes = sorted(p.name for p in artifacts.dataset.iterdir())
    assert classes == [f"{c:05d}" for c in range(10)]
    assert sorted(p.name for p in (artifacts.dataset / "00003").iterdir()) == [f"00003_{k:03d}.png" for k in range(3)]
    with open(artifacts.manifest) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and {r["side"] for r in rows} == {"same", "other"}


def test_same_seed_gives_identical_dataset_and_shards_match(tmp_path):
    whole = _files(_run(tmp_path / "a").dataset)
    again = _files(_run(tmp_path / "b").dataset)
    assert whole == again
    assert _run(tmp_path / "s", shard=1, num_shards=2) is None  # shards never finish the stage: merge does
    with pytest.raises(DataError, match="2 of 3 chunks are not generated yet"):
        finalize(tmp_path / "s")
    assert _run(tmp_path / "s", shard=0, num_shards=2) is None
    assert _files(finalize(tmp_path / "s").dataset) == whole


def test_resume_skips_recorded_chunks_and_rewrites_partial_ones(tmp_path):
    reference = _files(_run(tmp_path / "ref").dataset)
    artifacts = _run(tmp_path / "run")
    # Simulate a kill: forget the last chunk's record, truncate one of its images, leave a temp file.
    records = sorted((tmp_path / "run" / "progress").glob("*.csv"))
    records[-1].unlink()
    victim = artifacts.dataset / "00009" / "00009_002.png"
    victim.write_bytes(victim.read_bytes()[:10])
    (artifacts.dataset / "00009" / ".00009_001.png.abc.tmp").write_bytes(b"x")
    first = artifacts.dataset / "00000" / "00000_000.png"
    mtime = first.stat().st_mtime_ns
    _run(tmp_path / "run")
    assert _files(artifacts.dataset) == reference
    assert first.stat().st_mtime_ns == mtime  # completed chunks were not redone


def test_dropped_faces_are_counted_not_written(tmp_path):
    artifacts = _run(tmp_path, drop_above=0.0, on_no_face="drop")
    stats = __import__("json").loads(artifacts.stats.read_text())
    written = len(list(artifacts.dataset.rglob("*.png")))
    assert 0 < written < 30
    assert stats["attempted"] == 30 and stats["images"] == written and stats["dropped"] == 30 - written
    assert stats["rejected_no_face"] == 30 - written and stats["redrawn"] == 0


def test_bad_inputs_are_refused(tmp_path):
    generator = ToyGenerator()
    w, n = _boundaries(d=generator.w_dim + 1)
    with pytest.raises(DataError, match="another GAN"):
        generate(tmp_path, generator, ToyAligner(), reference_latents=w, normals=n)
    with pytest.raises(ConfigError, match="min_off"):
        OffsetSpec(min_off=3, max_off=1)
    assert not (tmp_path / "dataset").exists()


def test_resume_keeps_the_chunking_the_stage_started_with(tmp_path):
    reference = _run(tmp_path / "ref")
    assert _run(tmp_path / "run", shard=0, num_shards=2) is None  # chunks of 2 references
    resumed = _run(tmp_path / "run", references_per_chunk=3)  # would overlap the recorded chunks
    assert resumed.manifest.read_bytes() == reference.manifest.read_bytes()  # no row twice
    assert _files(resumed.dataset) == _files(reference.dataset)


def test_references_without_a_boundary_are_left_out_even_a_whole_chunk(tmp_path):
    valid = np.array([False, False, True, False, True])  # chunks of 2: the first has no valid reference
    artifacts = _run(tmp_path / "some", valid=valid)
    assert sorted(p.name for p in artifacts.dataset.iterdir()) == ["00004", "00005", "00008", "00009"]
    with open(artifacts.manifest) as f:
        assert sorted({int(r["reference"]) for r in csv.DictReader(f)}) == [2, 4]
    with pytest.raises(DataError, match="none of the 5 references has a boundary"):
        _run(tmp_path / "none", valid=np.zeros(5, bool))
    assert not (tmp_path / "none" / "dataset").exists()


def _progress_rows(root: Path) -> list[dict]:
    return [row for record in sorted((root / "progress").glob("*.csv")) for row in csv.DictReader(open(record))]


def test_faces_not_found_are_redrawn_until_the_class_is_full_or_its_budget_is_spent(tmp_path):
    artifacts = _run(tmp_path / "run", drop_above=0.0, max_attempts=5)
    rows = _progress_rows(tmp_path / "run")
    stats = __import__("json").loads(artifacts.stats.read_text())
    per_class: dict[int, list[dict]] = {}
    for row in rows:
        per_class.setdefault(int(row["class"]), []).append(row)
    short = 0
    for cls, renders in per_class.items():
        kept = [r for r in renders if not r["rejected"]]
        assert sorted(int(r["k"]) for r in kept) == sorted({int(r["k"]) for r in kept})  # a slot is filled once
        attempts = [int(r["attempt"]) for r in renders]
        assert len(attempts) == len(set(attempts)) <= 5  # each draw used once per class, within the budget
        assert sorted(attempts)[:3] == [0, 1, 2] and all(a >= 3 for a in attempts[3:])  # slot k first tries draw k
        if len(kept) < 3:
            assert len(renders) == 5  # short only when the budget is spent
            short += 1
        failed = [r for r in renders if r["rejected"]]
        assert all(r["rejected"] == "no_face" and r["path"] == "" and r["found"] == "0" for r in failed)
    assert stats["attempted"] == len(rows) > 30 and stats["redrawn"] == len(rows) - 30
    assert stats["images"] == len(list(artifacts.dataset.rglob("*.png"))) == 30 - stats["dropped"]
    assert stats["classes_short"] == short and stats["rejected_no_face"] == sum(1 for r in rows if r["rejected"])
    # A draw whose face shows on one side only stays in that class; the mirror class takes a later draw.
    outcome = {(r["reference"], r["attempt"], r["side"]): not r["rejected"] for r in rows}
    assert any(kept != outcome.get((ref, attempt, "other" if side == "same" else "same"), kept)
               for (ref, attempt, side), kept in outcome.items())


def test_redrawn_images_are_the_renderings_of_their_draws(tmp_path):
    from PIL import Image

    from exfacegan.gans.latent import to_uint8

    generator, aligner = ToyGenerator(), ToyAligner(0.0)
    w, n = _boundaries(r=5, d=generator.w_dim)
    _run(tmp_path, drop_above=0.0, max_attempts=9)
    redrawn = [r for r in _progress_rows(tmp_path) if not r["rejected"] and int(r["attempt"]) >= 3]
    assert redrawn
    for row in redrawn:
        r, sign, attempt = int(row["reference"]), (1 if row["side"] == "other" else -1), int(row["attempt"])
        u = np.random.default_rng([0, r, 0, attempt + 1]).uniform(0.0, 1.0, generator.w_dim)  # documented seeding
        code = torch.from_numpy((w[r].astype(np.float64) + sign * u * n[r]).astype(np.float32))[None]
        with torch.no_grad():
            face = to_uint8(aligner(generator.synthesis(code[:, None].repeat(1, generator.num_ws, 1)))[0])[0]
        written = np.asarray(Image.open(tmp_path / "dataset" / row["path"]))
        assert np.abs(written.astype(int) - face.permute(1, 2, 0).numpy().astype(int)).max() <= 1


@pytest.mark.parametrize("policy", ["redraw", "drop"])
def test_redraws_do_not_depend_on_chunking_sharding_or_resuming(policy, tmp_path):
    whole = _files(_run(tmp_path / "a", drop_above=0.0, on_no_face=policy).dataset)
    assert whole == _files(_run(tmp_path / "b", drop_above=0.0, on_no_face=policy, references_per_chunk=5).dataset)
    for shard in (1, 0):
        _run(tmp_path / "s", drop_above=0.0, on_no_face=policy, shard=shard, num_shards=2)
    assert _files(finalize(tmp_path / "s").dataset) == whole
    artifacts = _run(tmp_path / "k", drop_above=0.0, on_no_face=policy)
    sorted((tmp_path / "k" / "progress").glob("*.csv"))[-1].unlink()  # killed before the last chunk was recorded
    assert _files(_run(tmp_path / "k", drop_above=0.0, on_no_face=policy).dataset) == whole
    assert artifacts.manifest.is_file()


def test_an_extra_acceptance_test_plugs_into_the_same_redraw_loop(tmp_path):
    class EvenAttemptsOnly:  # stands in for an identity filter: it judges the faces of some draws as failing
        name = "odd_attempt"

        def __call__(self, faces, draws):
            assert faces.dtype == torch.uint8 and faces.shape[1:] == (3, 112, 112)
            return torch.tensor([d.attempt % 2 == 0 for d in draws])

    generator = ToyGenerator()
    w, n = _boundaries(r=5, d=generator.w_dim)
    spec = GenerateSpec(offsets=OffsetSpec(per_class=3, max_off=1.0, max_attempts=6), batch_size=4)
    artifacts = generate(tmp_path, generator, ToyAligner(), reference_latents=w, normals=n, spec=spec,
                         accept=[EvenAttemptsOnly()])
    stats = __import__("json").loads(artifacts.stats.read_text())
    with open(artifacts.manifest) as f:
        kept = list(csv.DictReader(f))
    # Slot 1 (draw 1, odd) is re-drawn with draw 3 (odd), then draw 4 (even) in every class: 5 renders per class.
    assert sorted({(r["k"], r["attempt"]) for r in kept}) == [("0", "0"), ("1", "4"), ("2", "2")]
    assert stats["rejected_odd_attempt"] == 2 * 10 and stats["rejected_no_face"] == 0
    assert stats["attempted"] == 5 * 10 and stats["redrawn"] == 2 * 10 and stats["images"] == 30
