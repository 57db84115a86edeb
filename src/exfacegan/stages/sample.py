"""Stage 1: sample latent codes, synthesise and align their faces, embed them.

The stored w is the one labelling and fitting see: the raw mapping output, or, with
`truncation.at="sample"` (the paper code's GAN-Control path), the truncated w. Faces are embedded
as a saved image holds them: clamped and rounded to uint8.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from exfacegan.align.pose import align_with_points, head_pose
from exfacegan.data.artifacts import save_npy, save_npz
from exfacegan.data.images import save_grid
from exfacegan.errors import ConfigError
from exfacegan.gans.latent import Truncation, map_z, synthesize, to_uint8
from exfacegan.pipeline import ChunkStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleArtifacts:
    latents: Path  # z [N, z_dim], w [N, w_dim], seeds [N], found [N]
    embeddings: Path  # float32 [N, D], L2-normalised (zeros where no face was found)
    preview: Path
    poses: Path  # float32 [N, 3] head pose (yaw, pitch, roll) in degrees; NaN where no face or no landmarks


def latent_seeds(num_samples: int, seed: int) -> np.ndarray:
    return np.arange(num_samples, dtype=np.int64) + np.int64(seed) * 1_000_003


def seeded_normal(seeds: np.ndarray, dim: int) -> np.ndarray:
    """One standard-normal vector per seed, independent of how the seeds are batched."""
    return np.stack([np.random.default_rng(int(s)).standard_normal(dim) for s in seeds]).astype(np.float32)


Z_STREAMS = ("seeded", "paper")


def paper_normal(num_samples: int, dim: int, seed: int) -> np.ndarray:
    """All codes at once as the paper code's `LatsDataset` draws them: `np.random.seed(seed)` then
    `np.random.randn(num_samples, dim)` (float64), cast to float32 as its generator wrapper does."""
    return np.random.RandomState(seed).randn(num_samples, dim).astype(np.float32)


def latent_codes(num_samples: int, dim: int, seed: int, z_stream: str = "seeded") -> Callable[[np.ndarray], np.ndarray]:
    """z [len(rows), dim] of the sample rows asked for: `seeded` one generator per code (independent of batching
    and of num_samples), `paper` the paper code's one stream for all codes (code i depends on i only)."""
    if z_stream not in Z_STREAMS:
        raise ConfigError(f"sample.z_stream must be one of {', '.join(Z_STREAMS)}, got {z_stream!r}")
    if z_stream == "paper":
        stream = paper_normal(num_samples, dim, seed)
        return lambda rows: stream[rows]
    seeds = latent_seeds(num_samples, seed)
    return lambda rows: seeded_normal(seeds[rows], dim)


def sample(
    out_dir: Path,
    generator: nn.Module,
    aligner: nn.Module,
    embedder: nn.Module,
    *,
    num_samples: int,
    seed: int = 0,
    truncation: Truncation = Truncation(),
    noise_mode: str = "const",
    precision: str = "fp32",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    preview: int = 16,
    randomize_attributes: bool = False,
    z_stream: str = "seeded",
) -> SampleArtifacts:
    """Write `latents.npz`, `embeddings.npy`, `poses.npy` and `preview.png` into `out_dir`.

    `randomize_attributes` lets a backbone with attribute controllers (GAN-Control) draw random
    pose, age, illumination and expression per sample; the paper labels images without them.
    `z_stream`: how z is drawn (`latent_codes`); `paper` is the paper code's `np.random.randn` stream.

    Work is saved per batch under `out_dir/chunks`, so an interrupted call resumes where it stopped.
    """
    if num_samples < 2:
        raise ConfigError(f"sample.num_samples must be at least 2, got {num_samples}")
    out_dir = Path(out_dir)
    seeds = latent_seeds(num_samples, seed)
    codes = latent_codes(num_samples, generator.z_dim, seed, z_stream)
    chunks = ChunkStore(out_dir / "chunks")
    starts = list(range(0, num_samples, batch_size))
    preview_rows: list[torch.Tensor] = []
    for start in tqdm(starts, desc="sample", unit="batch"):
        batch_seeds = seeds[start : start + batch_size]
        need_preview = start < preview
        if chunks.done(start) and not need_preview:
            continue
        z = torch.from_numpy(codes(np.arange(start, start + len(batch_seeds)))).to(device)
        w = truncation.sampled(generator, map_z(generator, z))
        images = synthesize(
            generator, w, truncation=truncation, noise_mode=noise_mode,
            seeds=torch.from_numpy(batch_seeds) if randomize_attributes else None, precision=precision,
        )
        faces, found, points = align_with_points(aligner, images)
        with torch.inference_mode():
            embeddings = embedder(to_uint8(faces)).float() * found[:, None]
        if need_preview:
            preview_rows.append(_preview_tiles(images, faces, preview - start))
        chunks.save(
            start, z=z.cpu().numpy(), w=w.cpu().numpy(), seeds=batch_seeds,
            found=found.cpu().numpy(), embeddings=embeddings.cpu().numpy(), poses=head_pose(points, found),
        )
    result = chunks.concatenate(starts)
    artifacts = SampleArtifacts(out_dir / "latents.npz", out_dir / "embeddings.npy", out_dir / "preview.png",
                                out_dir / "poses.npy")
    save_npz(artifacts.latents, z=result["z"], w=result["w"], seeds=result["seeds"], found=result["found"])
    save_npy(artifacts.embeddings, result["embeddings"].astype(np.float32))
    save_npy(artifacts.poses, result["poses"].astype(np.float32))
    save_grid(artifacts.preview, torch.cat(preview_rows), columns=2 * min(8, preview, num_samples))
    chunks.remove()
    num_found = int(result["found"].sum())
    if num_found < num_samples:
        log.info("no face found in %d of %d samples; they are left out of labelling", num_samples - num_found, num_samples)
    return artifacts


def _preview_tiles(images: torch.Tensor, faces: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 tiles [2k, 3, 112, 112]: each raw image (resized to the face size) followed by its aligned face."""
    images, faces = images[:count], faces[:count]
    resized = nn.functional.interpolate(images, size=faces.shape[-2:], mode="area")
    return torch.stack([to_uint8(resized), to_uint8(faces)], dim=1).flatten(0, 1).cpu()
