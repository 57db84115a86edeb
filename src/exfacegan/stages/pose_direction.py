"""A yaw direction in w, learnt from the sample stage's codes and their estimated head pose.

Least squares of yaw (degrees) on w over the codes with a finite yaw gives yaw ≈ w·β + b. The direction is
d = β / ||β||², so that moving a code by t·d moves its predicted yaw by t degrees. Each reference r gets its own
copy made orthogonal to its identity normal n_r (Gram–Schmidt) and rescaled so that one unit still moves the
predicted yaw by one degree: d_r = p_r / (β·p_r) with p_r = d − (d·n_r) n_r, the smallest shift orthogonal to n_r
that does. A pose shift then leaves the code's signed distance to its identity boundary where the offset put it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exfacegan.data.artifacts import save_npz
from exfacegan.errors import DataError

POSE_DIRECTION_FILE = "pose_direction.npz"
MIN_GAIN = 1e-6  # below this β·p_r the normal is (nearly) the yaw direction: no orthogonal shift turns the head


@dataclass(frozen=True)
class YawModel:
    """yaw ≈ w·β + intercept over `count` codes; `direction` = β / ||β||² (one unit: one degree)."""

    direction: np.ndarray
    intercept: float
    r2: float
    count: int

    def predict(self, latents: np.ndarray) -> np.ndarray:
        beta = self.direction / float(self.direction @ self.direction)
        return latents @ beta + self.intercept


@dataclass(frozen=True)
class PoseShift:
    """Per reference (indexed like the boundaries): its orthogonalised yaw direction [R, d] and its own yaw [R]."""

    directions: np.ndarray
    reference_yaw: np.ndarray


def fit_yaw_direction(latents: np.ndarray, yaw: np.ndarray) -> YawModel:
    """The least-squares yaw model of codes [N, d] with yaws [N] (NaN rows left out); R² is in-sample."""
    finite = np.isfinite(yaw)
    if finite.sum() < 2:
        raise DataError(f"only {int(finite.sum())} of {len(yaw)} sampled codes have an estimated yaw; the pose "
                        "direction needs an aligner that finds landmarks (align=mtcnn or align=dlib)")
    x, y = latents[finite].astype(np.float64), yaw[finite].astype(np.float64)
    x_mean, y_mean = x.mean(0), y.mean()
    beta = np.linalg.lstsq(x - x_mean, y - y_mean, rcond=None)[0]
    norm2 = float(beta @ beta)
    if not norm2 > 0:
        raise DataError("the sampled codes' yaw does not vary with w (all estimated yaws are equal)")
    residual = (y - y_mean) - (x - x_mean) @ beta
    total = float(((y - y_mean) ** 2).sum())
    r2 = 1.0 - float(residual @ residual) / total if total > 0 else float("nan")
    return YawModel(beta / norm2, float(y_mean - x_mean @ beta), r2, int(finite.sum()))


def orthogonal_directions(direction: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """[R, d]: `direction` made orthogonal to each row of `normals` and rescaled to one degree per unit (zero rows
    where the normal is the yaw direction itself)."""
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
    projected = direction[None, :] - (n @ direction)[:, None] * n
    gain = projected @ (direction / float(direction @ direction))
    usable = gain > MIN_GAIN
    return np.where(usable[:, None], projected / np.where(usable, gain, 1.0)[:, None], 0.0)


def pose_shift(model: YawModel, normals: np.ndarray, reference_latents: np.ndarray,
               reference_yaw: np.ndarray) -> PoseShift:
    """The per-reference shift; a reference without an estimated yaw takes the model's prediction for its code."""
    own = np.where(np.isfinite(reference_yaw), reference_yaw, model.predict(reference_latents))
    return PoseShift(orthogonal_directions(model.direction, normals), own.astype(np.float64))


def save_pose_direction(path: Path, model: YawModel, shift: PoseShift) -> None:
    save_npz(path, direction=model.direction, intercept=np.float64(model.intercept), r2=np.float64(model.r2),
             count=np.int64(model.count), directions=shift.directions, reference_yaw=shift.reference_yaw)


def load_pose_shift(path: Path, references: int, w_dim: int) -> PoseShift:
    """The fit stage's per-reference shift, checked against the boundaries' size."""
    if not Path(path).is_file():
        raise DataError(f"{path} is missing: sampling.pose needs the yaw direction the fit stage learns from "
                        "sample/poses.npy; rerun the fit stage (stages=[fit,generate] overwrite=true)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            directions, own = archive["directions"], archive["reference_yaw"]
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise DataError(f"{path}: not a readable pose direction ({type(error).__name__}); "
                        "rerun the fit stage") from None
    if directions.shape != (references, w_dim) or own.shape != (references,) or not (
            np.isfinite(directions).all() and np.isfinite(own).all()):
        raise DataError(f"{path}: directions {directions.shape} / reference_yaw {own.shape} do not fit "
                        f"{references} boundaries of w_dim {w_dim}, or hold NaN; rerun the fit stage")
    return PoseShift(directions.astype(np.float64), own.astype(np.float64))
