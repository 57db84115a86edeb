"""The weights registry: published hashes, archive members, offline errors, and the preflight before any stage."""

import hashlib
import io
import urllib.error
import zipfile

import pytest
from omegaconf import OmegaConf

from exfacegan import weights
from exfacegan.errors import CheckpointError
from exfacegan.gans import load_generator
from exfacegan.provenance import checkpoint_paths

def test_registry_offline_error_names_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EXFACEGAN_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    expected = tmp_path / "cache" / "ffhq.pkl"
    with pytest.raises(CheckpointError) as info:
        load_generator("stylegan2-ada-ffhq-1024")
    message = str(info.value)
    assert weights.REGISTRY["stylegan2-ada-ffhq-1024"].url in message and str(expected) in message
    assert "\n" not in message
    assert not any(p.is_file() for p in (tmp_path / "cache").iterdir())


class _FakeResponse(io.BytesIO):
    headers = {"Content-Length": "11"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_registry_download_is_recorded_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("EXFACEGAN_CACHE", str(tmp_path))
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(b"hello world"))
    path = weights.fetch("stylegan3-t-ffhq-1024")
    assert path == tmp_path / "stylegan3-t-ffhq-1024x1024.pkl" and path.read_bytes() == b"hello world"
    recorded = (tmp_path / "stylegan3-t-ffhq-1024x1024.pkl.sha256").read_text().split()[0]
    assert recorded == weights.sha256_of(path)
    assert weights.fetch("stylegan3-t-ffhq-1024") == path  # cached and verified
    path.write_bytes(b"hello worle")
    with pytest.raises(CheckpointError, match="SHA-256"):
        weights.fetch("stylegan3-t-ffhq-1024")
    with pytest.raises(CheckpointError, match="unknown checkpoint name"):
        weights.fetch("stylegan7")


def test_the_published_sha256s_are_in_the_registry():
    # Values published with insightface's v0.7 model packs (FACTS.md, issue 11) and on PyPI for facenet-pytorch 2.6.0.
    r50, r100 = weights.REGISTRY["arcface_r50_webface600k"], weights.REGISTRY["arcface_r100_glint360k"]
    assert (r50.url, r50.member) == ("https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                                     "w600k_r50.onnx")
    assert r50.sha256 == "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f"
    assert r50.member_sha256 == "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"
    assert (r100.url, r100.member) == ("https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
                                       "glintr100.onnx")
    assert r100.sha256 == "8e182f14fc6e80b3bfa375b33eb6cff7ee05d8ef7633e738d1c89021dcf0c5c5"
    assert r100.member_sha256 == "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf"
    assert "non-commercial" in r50.license and "non-commercial" in r100.license
    mtcnn = [weights.REGISTRY[f"mtcnn-{net}"] for net in ("pnet", "rnet", "onet")]
    assert {e.url.rsplit("/", 1)[-1] for e in mtcnn} == {"facenet_pytorch-2.6.0-py3-none-any.whl"}
    assert {e.sha256 for e in mtcnn} == {"ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"}
    assert [e.member for e in mtcnn] == [f"facenet_pytorch/data/{net}.pt" for net in ("pnet", "rnet", "onet")]
    with pytest.raises(ValueError, match="published SHA-256"):
        weights.WeightsSpec("https://example.org/a.zip", "onnx", "no hashes", member="a.onnx")


MEMBER, SIBLING = b"the model bytes", b"another model of the same pack"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pack(tmp_path, monkeypatch):
    """pack.zip (members under a folder, as some packs have them) served from a file:// URL, two registry entries."""
    archive = tmp_path / "served" / "pack.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("pack/model.onnx", MEMBER)
        bundle.writestr("pack/other.bin", SIBLING)
        bundle.writestr("pack/unused.bin", b"not in the registry")
    url = archive.as_uri()
    entries = {
        "toy": weights.WeightsSpec(url, "onnx", "toy", _sha(archive.read_bytes()), "model.onnx", _sha(MEMBER), "toy license"),
        "toy-sibling": weights.WeightsSpec(url, "mtcnn", "sibling", _sha(archive.read_bytes()), "other.bin", _sha(SIBLING)),
    }
    for name, entry in entries.items():
        monkeypatch.setitem(weights.REGISTRY, name, entry)
    monkeypatch.setenv("EXFACEGAN_CACHE", str(tmp_path / "cache"))
    return archive


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_archive_members_are_extracted_verified_and_the_archive_dropped(pack, tmp_path, capsys):
    path = weights.fetch("toy")
    assert path == tmp_path / "cache" / "pack" / "model.onnx" and path.read_bytes() == MEMBER
    assert _files(tmp_path / "cache") == ["pack/model.onnx", "pack/other.bin"]  # registry members only, no archive
    assert (tmp_path / "cache" / "pack" / "other.bin").read_bytes() == SIBLING
    assert "toy license" in capsys.readouterr().err
    pack.unlink()  # cached now: no download
    assert weights.fetch("toy") == path and weights.fetch("toy-sibling").read_bytes() == SIBLING
    assert "license" not in capsys.readouterr().err
    path.write_bytes(b"the model bytez")
    with pytest.raises(CheckpointError, match="SHA-256"):
        weights.fetch("toy")


@pytest.mark.parametrize("wrong", ["sha256", "member_sha256"])
def test_a_wrong_archive_or_member_hash_is_refused_leaving_no_file(pack, tmp_path, monkeypatch, wrong):
    entry = weights.REGISTRY["toy"]
    monkeypatch.setitem(weights.REGISTRY, "toy", weights.WeightsSpec(**{**entry.__dict__, wrong: "0" * 64}))
    with pytest.raises(CheckpointError, match="SHA-256") as error:
        weights.fetch("toy")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "cache" / "pack" / "model.onnx").exists()
    assert [f for f in _files(tmp_path / "cache") if f != "pack/other.bin"] == []


def test_offline_member_error_names_where_to_put_archive_or_member(pack, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as error:
        weights.fetch("toy")
    message = str(error.value)
    assert "\n" not in message and "network is unreachable" in message
    assert str(tmp_path / "cache" / "pack.zip") in message and str(tmp_path / "cache" / "pack" / "model.onnx") in message
    assert _files(tmp_path / "cache") == []
    # Put where the message says, the archive works offline.
    (tmp_path / "cache" / "pack.zip").write_bytes(pack.read_bytes())
    assert weights.fetch("toy").read_bytes() == MEMBER


def _pipeline_cfg(stages, gan_source, embedder_path):
    return OmegaConf.create({
        "stages": stages,
        "gan": {"network": {"_target_": "exfacegan.gans.load_generator", "source": gan_source}},
        "align": {"_target_": "exfacegan.align.FFHQTemplateAligner"},
        "embedder": {"path": embedder_path, "network": {"_target_": "x", "path": "${..path}"}},
        "analyze": {"max_impostor_pairs": 10},
    })


def test_preflight_checks_every_source_first_then_fetches_what_the_stages_build(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(weights, "fetch", lambda name, **kwargs: fetched.append(name))
    with pytest.raises(CheckpointError, match=r"embedder.network.path=/nonexistent/model.onnx does not exist") as error:
        weights.preflight(_pipeline_cfg(["sample"], "stylegan2-ffhq-256", "/nonexistent/model.onnx"))
    assert "\n" not in str(error.value) and fetched == []  # no GAN download before the missing embedder is found
    weights.preflight(_pipeline_cfg(["label", "fit"], "stylegan2-ffhq-256", "arcface_r50_webface600k"))
    assert fetched == []
    weights.preflight(_pipeline_cfg(["generate"], "stylegan2-ffhq-256", "arcface_r50_webface600k"))
    assert fetched == ["stylegan2-ffhq-256"]
    fetched.clear()
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"x")
    weights.preflight(_pipeline_cfg(["sample", "analyze"], "stylegan2-ffhq-256", "arcface_r50_webface600k"))
    weights.preflight(_pipeline_cfg(["sample"], str(tmp_path), str(onnx_file)))  # a GAN-Control folder, a file
    assert fetched == ["arcface_r50_webface600k", "stylegan2-ffhq-256"]  # an unreachable embedder fails before the GAN



def test_preflight_covers_the_identity_filters_judge_only_when_the_filter_is_on(monkeypatch):
    fetched = []
    monkeypatch.setattr(weights, "fetch", lambda name, **kwargs: fetched.append(name))
    cfg = _pipeline_cfg(["generate"], "stylegan2-ffhq-256", "arcface_r50_webface600k")
    cfg.filter = {"min_reference_similarity": None, "max_cross_similarity": None,
                  "judge": {"network": {"_target_": "x", "path": "/nonexistent/judge.onnx"}}}
    with pytest.raises(CheckpointError, match=r"filter.judge.network.path=/nonexistent/judge.onnx does not exist"):
        weights.preflight(cfg)  # a judge that cannot load is refused even while the filter is off
    cfg.filter.judge.network.path = "arcface_r100_glint360k"
    weights.preflight(cfg)
    assert fetched == ["stylegan2-ffhq-256"]  # the filter is off: its judge is not downloaded
    fetched.clear()
    cfg.filter.min_reference_similarity = 0.4
    weights.preflight(cfg)
    assert fetched == ["arcface_r100_glint360k", "stylegan2-ffhq-256"]  # the judge before the GAN
    fetched.clear()
    del cfg.filter["judge"]
    weights.preflight(cfg)
    assert fetched == ["arcface_r50_webface600k", "stylegan2-ffhq-256"]  # no judge: the run's embedder judges

def test_provenance_records_the_cached_file_of_a_registry_name(pack, tmp_path):
    path = weights.fetch("toy")
    cfg = OmegaConf.create({"embedder": {"network": {"path": "toy"}}, "gan": {"network": {"source": "toy-sibling"}}})
    assert checkpoint_paths(cfg) == {"embedder.network.path": path, "gan.network.source": path.with_name("other.bin")}


@pytest.mark.parametrize("experiment, missing", [("paper_sg2", set()), ("paper_sg3", set()),
                                                 ("paper_gan_control", {"gan.network.source"})])
def test_paper_experiments_need_only_what_cannot_be_downloaded(experiment, missing):
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"])
    assert OmegaConf.missing_keys(cfg) == missing
    assert cfg.embedder.network.path == "arcface_r50_webface600k" and cfg.sample.num_samples == 11000
    if experiment == "paper_sg3":
        assert cfg.gan.network.source == "stylegan3-r-ffhq-1024"
