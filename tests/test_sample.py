import numpy as np
import pytest

from exfacegan.errors import ConfigError
from exfacegan.gans.latent import Truncation
from exfacegan.stages.sample import sample
from toys import ToyAligner, ToyEmbedder, ToyGenerator


def _sample(out, batch_size=4, num_samples=10, aligner=None):
    return sample(out, ToyGenerator(), aligner or ToyAligner(), ToyEmbedder(), num_samples=num_samples,
                  seed=3, truncation=Truncation(psi=0.5), batch_size=batch_size, preview=4)


def test_sample_writes_latents_embeddings_and_preview(tmp_path):
    artifacts = _sample(tmp_path)
    latents = np.load(artifacts.latents)
    assert latents["z"].shape == (10, 8) and latents["w"].shape == (10, 6) and latents["found"].all()
    embeddings = np.load(artifacts.embeddings)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert artifacts.preview.is_file() and not (tmp_path / "chunks").exists()


def test_stored_embeddings_are_those_of_the_faces_as_saved_in_uint8(tmp_path):
    import torch

    generator, aligner, embedder = ToyGenerator(), ToyAligner(), ToyEmbedder()
    latents = np.load(_sample(tmp_path).latents)
    stored = np.load(tmp_path / "embeddings.npy")
    with torch.no_grad():
        ws = generator.mapping(torch.from_numpy(latents["z"]), None)  # psi 0.5 is applied when rendering
        ws = generator.mapping.w_avg.lerp(ws, 0.5)
        faces, _ = aligner(generator.synthesis(ws))
        pixels = (faces * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # what a saved image holds
        expected = embedder((pixels.float() - 127.5) / 127.5).numpy()
        unrounded = embedder(faces).numpy()
    np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-6)
    assert np.abs(stored - unrounded).max() > 1e-5  # the rounding is visible, so the check above can fail


def test_codes_do_not_depend_on_batching(tmp_path):
    a = np.load(_sample(tmp_path / "a", batch_size=3).latents)
    b = np.load(_sample(tmp_path / "b", batch_size=10).latents)
    np.testing.assert_array_equal(a["z"], b["z"])
    np.testing.assert_array_equal(a["seeds"], b["seeds"])
    np.testing.assert_allclose(a["w"], b["w"], atol=1e-6)


def test_resume_uses_saved_chunks(tmp_path):
    first = np.load(_sample(tmp_path / "a").embeddings)
    from exfacegan.pipeline import ChunkStore

    store = ChunkStore(tmp_path / "b" / "chunks")
    marker = np.full((4, 16), 7.0, np.float32)
    store.save(4, z=np.zeros((4, 8), np.float32), w=np.zeros((4, 6), np.float32),
               seeds=np.arange(4), found=np.ones(4, bool), embeddings=marker,
               poses=np.full((4, 3), np.nan, np.float32))
    resumed = np.load(_sample(tmp_path / "b").embeddings)
    np.testing.assert_array_equal(resumed[4:8], marker)  # the saved chunk was not recomputed
    np.testing.assert_allclose(resumed[:4], first[:4])


def test_faces_not_found_are_marked_and_zeroed(tmp_path):
    artifacts = _sample(tmp_path, aligner=ToyAligner(drop_above=-0.028))
    found = np.load(artifacts.latents)["found"]
    embeddings = np.load(artifacts.embeddings)
    assert 0 < found.sum() < len(found)
    assert np.all(embeddings[~found] == 0)


def test_too_few_samples_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="num_samples"):
        _sample(tmp_path, num_samples=1)


def _official_uint8(images):
    """NVIDIA's conversion of synthesis output to pixels (gen_images.py), written out here as the oracle."""
    import torch

    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def test_the_sample_stage_stores_the_mapping_of_each_z_and_the_embedding_of_its_aligned_face(tmp_path):
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from exfacegan.app import run_pipeline
    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=smoke", "logger=none", "cache_dir=null", "stages=[sample]", "sample.num_samples=10", "label.num_references=4",
            "gan.batch_size=4", "sample.seed=2", f"run_dir={tmp_path}",
        ])
    run_pipeline(cfg)
    latents = np.load(tmp_path / "sample" / "latents.npz")
    stored = np.load(tmp_path / "sample" / "embeddings.npy")

    for seed, z in zip(latents["seeds"], latents["z"]):  # each z is the standard normal of its own seed
        np.testing.assert_array_equal(z, np.random.default_rng(int(seed)).standard_normal(len(z)).astype(np.float32))
    assert len(np.unique(latents["seeds"])) == 10
    generator = instantiate(cfg.gan.network).eval()
    aligner, embedder = instantiate(cfg.align).eval(), instantiate(cfg.embedder.network).eval()
    z = torch.from_numpy(latents["z"])
    with torch.no_grad():
        np.testing.assert_allclose(latents["w"], generator.mapping(z, None)[:, 0].numpy(), rtol=1e-5, atol=1e-5)
        # The generator's own truncation (psi 0.7 toward w_avg on every ws, as experiment=smoke sets it).
        ws = generator.mapping(z, None, truncation_psi=0.7, truncation_cutoff=None)
        faces, found = aligner(generator.synthesis(ws, noise_mode="const"))
        # Oracle: the sample stage embeds what a saved image holds, embedder(to_uint8(aligner(synthesis(...)))).
        rounded = embedder(_official_uint8(faces)).numpy() * found[:, None].numpy()
    assert found.all() and stored.shape == rounded.shape
    np.testing.assert_allclose(stored, rounded, rtol=1e-4, atol=1e-5)
