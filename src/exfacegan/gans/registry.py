"""Official generator checkpoints by name: download once, cache, verify.

Files are cached under `~/.cache/exfacegan` (override with the environment variable
`EXFACEGAN_CACHE`), downloaded with urllib into a temporary file that is renamed into place
only when complete. NVIDIA publishes no SHA-256 for these files, so verification is trust on
first use: the hash of the first download (or of a file the user put in place) is recorded
next to it as `<file>.sha256`, and every later load is checked against it. An entry with a
known `sha256` is checked against that instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from exfacegan.errors import CheckpointError

_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research"
_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"


@dataclass(frozen=True)
class CheckpointSpec:
    url: str
    arch: str
    description: str
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


REGISTRY: dict[str, CheckpointSpec] = {
    "stylegan2-ada-ffhq-1024": CheckpointSpec(f"{_ADA}/ffhq.pkl", "stylegan2", "StyleGAN2-ADA-PyTorch FFHQ 1024 (ffhq.pkl)"),
    "stylegan2-ffhq-1024": CheckpointSpec(f"{_NGC}/stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl", "stylegan2", "StyleGAN2 FFHQ 1024 (StyleGAN3 repo)"),
    "stylegan2-ffhq-512": CheckpointSpec(f"{_NGC}/stylegan2/versions/1/files/stylegan2-ffhq-512x512.pkl", "stylegan2", "StyleGAN2 FFHQ 512 (StyleGAN3 repo)"),
    "stylegan2-ffhq-256": CheckpointSpec(f"{_NGC}/stylegan2/versions/1/files/stylegan2-ffhq-256x256.pkl", "stylegan2", "StyleGAN2 FFHQ 256 (StyleGAN3 repo)"),
    "stylegan3-t-ffhq-1024": CheckpointSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-t-ffhq-1024x1024.pkl", "stylegan3", "StyleGAN3-T FFHQ 1024"),
    "stylegan3-r-ffhq-1024": CheckpointSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-r-ffhq-1024x1024.pkl", "stylegan3", "StyleGAN3-R FFHQ 1024"),
    "stylegan3-t-ffhqu-1024": CheckpointSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-t-ffhqu-1024x1024.pkl", "stylegan3", "StyleGAN3-T FFHQ-U (unaligned) 1024"),
    "stylegan3-r-ffhqu-1024": CheckpointSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-r-ffhqu-1024x1024.pkl", "stylegan3", "StyleGAN3-R FFHQ-U (unaligned) 1024"),
    "stylegan3-t-ffhqu-256": CheckpointSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-t-ffhqu-256x256.pkl", "stylegan3", "StyleGAN3-T FFHQ-U (unaligned) 256"),
    "stylegan3-r-ffhqu-256": CheckpointSpec(f"{_NGC}/stylegan3/versions/1/files/stylegan3-r-ffhqu-256x256.pkl", "stylegan3", "StyleGAN3-R FFHQ-U (unaligned) 256"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EXFACEGAN_CACHE") or "~/.cache/exfacegan").expanduser()


def spec(name: str) -> CheckpointSpec:
    if name not in REGISTRY:
        raise CheckpointError(f"unknown checkpoint name {name!r}; known names: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def checkpoint_path(name: str) -> Path:
    """Where the file of a registry entry is (or will be) cached."""
    return cache_dir() / spec(name).filename


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(name: str, path: Path, digest: str | None = None) -> None:
    """Check a cached file against the known hash, or the one recorded at first use."""
    digest = digest or sha256_of(path)
    record = _record_path(path)
    expected = spec(name).sha256 or (record.read_text().split()[0] if record.is_file() else None)
    if expected is None:
        record.write_text(f"{digest}  {path.name}\n")
        return
    if digest != expected:
        raise CheckpointError(
            f"{path} has SHA-256 {digest}, expected {expected}: the file is corrupt or not {name}; delete it and retry"
        )


def fetch(name: str, *, timeout: float = 60.0) -> Path:
    """Path of the verified checkpoint file of a registry name, downloaded if not cached."""
    entry = spec(name)
    path = checkpoint_path(name)
    if path.is_file():
        verify(name, path)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = _download(entry.url, path, timeout, entry.sha256)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        raise CheckpointError(
            f"cannot download {name} from {entry.url} ({reason}); download it yourself and put it at {path}"
        ) from None
    verify(name, path, digest)
    return path


def _download(url: str, path: Path, timeout: float, expected: str | None = None) -> str:
    """Stream url into a temporary file beside path and rename it into place (only if it
    matches `expected`, when given); returns its SHA-256."""
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False)
    tmp = Path(handle.name)
    try:
        with handle, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {path.name}") as progress:
                while block := response.read(1 << 20):
                    handle.write(block)
                    digest.update(block)
                    progress.update(len(block))
        if expected is not None and digest.hexdigest() != expected:
            raise CheckpointError(f"download of {url} has SHA-256 {digest.hexdigest()}, expected {expected}; retry")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()
