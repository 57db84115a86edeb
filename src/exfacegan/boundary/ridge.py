"""`boundary=ridge`: regularised least-squares classifier on +-1 targets, for every reference at once.

    min_w 0.5 * ||w||^2 + C * sum_{i in train_r} (1 - y_ri * [x_i, 1] . w)^2
    <=>  H_r w = b_r,  H_r = I + 2C X' T_r X,  b_r = 2C X' T_r y_r   (T_r: training codes of reference r)

It is LinearSVC's squared hinge with every training code counted as a margin violator (the first Newton
step of `batched` from w = 0), in closed form. All references of a chunk share ONE factorisation: the
eigendecomposition of H_s = I + 2C X' T_s X, T_s the codes most of them train on. A reference's system
differs from H_s by the k_r codes where T_r and T_s disagree, H_r = H_s + U_r' S_r U_r (S_r = +-2C), so

    w_r = w_s - H_s^-1 U_r' (S_r^-1 + U_r H_s^-1 U_r')^-1 U_r w_s,   w_s = H_s^-1 b_r      (Woodbury)

with one k_r x k_r solve per reference (batched, float64) on the shared kernel X_B H_s^-1 X_B' of the codes
where any reference disagrees. With the default shared code order every reference's training set is the
leading 70% of the codes up to a few dozen codes near the cut (k_r ~ 40 at N = 11,000), so this costs about
two matrix products per reference. Where the sets differ a lot (`order=independent`, k_r ~ 0.4 N) the same
factorisation preconditions a batched conjugate-gradient solve instead (`newton.py`), converging to `tol`.

When to use it: the cheapest boundaries (seconds at paper scale on a CPU), fitted on every training code,
so less focused on the codes near the decision boundary than the SVM. Use it for quick sweeps, or where its
validation accuracy is within your tolerance of `batched`.
"""

from __future__ import annotations

import numpy as np
import torch

from exfacegan.boundary.options import FitOptions, SolverOutput
from exfacegan.boundary.batched import newton_chunk, solve_in_chunks
from exfacegan.boundary.newton import SQUARED, EigenPreconditioner
from exfacegan.boundary.preprocess import FitData, Roles

DEFAULT_TOL = 1e-5  # relative residual of the CG fallback
MAX_UPDATE_RANK = 768  # larger differences from the shared training set go to CG
SMALL_SYSTEM_BYTES = 256 * 2**20  # padded k x k systems solved at once
MAX_GROUP = 512


def _woodbury(features: torch.Tensor, roles: Roles, shared: torch.Tensor, pre: EigenPreconditioner, C: float):
    basis, scale = pre.basis64, 1.0 / (1.0 + 2 * C * pre.eigenvalues)

    def solve_shared(vectors: torch.Tensor) -> torch.Tensor:  # rows @ H_s^-1 (H_s is symmetric)
        return ((vectors.double() @ basis) * scale) @ basis.T

    train = roles.train
    right = (train.to(features.dtype) * roles.targets) @ features * (2 * C)
    shared_solution = solve_shared(right)
    differs = train ^ shared[None, :]
    band = torch.nonzero(differs.any(dim=0)).squeeze(1)
    if band.numel() == 0:
        return shared_solution
    band_features = features[band].double()
    kernel = solve_shared(band_features) @ band_features.T  # [B, B] = X_B H_s^-1 X_B'
    projections = shared_solution @ band_features.T  # U w_s for every band code
    differs = differs[:, band]
    ranks = differs.sum(dim=1, dtype=torch.int32)
    # The band positions where each reference differs come first (stable sort); references are solved in
    # batches of similar rank, each padded to its own largest rank.
    positions = torch.sort(differs.to(torch.uint8), dim=1, descending=True, stable=True).indices
    signs = torch.where(train[:, band].gather(1, positions), 1.0, -1.0).double()  # +1 added, -1 removed codes
    by_rank = torch.argsort(ranks)
    weights = torch.empty_like(shared_solution)
    start = 0
    while start < len(by_rank):
        widest = max(1, int(ranks[by_rank[min(start + MAX_GROUP, len(by_rank)) - 1]]))
        stop = start + max(1, min(MAX_GROUP, SMALL_SYSTEM_BYTES // (8 * widest * widest)))
        part = by_rank[start:stop]
        width = max(1, int(ranks[part].max()))
        index = positions[part, :width]
        mask = torch.arange(width, device=features.device)[None, :] < ranks[part, None]
        pair = mask[:, :, None] & mask[:, None, :]
        system = torch.where(pair, kernel[index[:, :, None], index[:, None, :]], 0.0)
        system.diagonal(dim1=1, dim2=2).add_(torch.where(mask, signs[part, :width] / (2 * C), 1.0))
        rhs = torch.where(mask, projections[part].gather(1, index), 0.0)
        # Symmetric indefinite (removed codes enter with -1/2C): Bunch-Kaufman LDL'. (Batched LU is also
        # avoided because MKL's batched getrf returns garbage pivots in some torch thread settings.)
        factor, pivots = torch.linalg.ldl_factor(system)
        alpha = torch.linalg.ldl_solve(factor, pivots, rhs.unsqueeze(2)).squeeze(2)
        coefficients = torch.zeros((len(part), band.numel()), dtype=torch.float64, device=features.device)
        coefficients.scatter_(1, index, torch.where(mask, alpha, 0.0))
        weights[part] = shared_solution[part] - solve_shared(coefficients @ band_features)
        start = stop
    return weights


def _ridge_chunk(features: torch.Tensor, roles: Roles, pre: EigenPreconditioner, opts: FitOptions):
    shared = pre.row_weights > 0
    if int((roles.train ^ shared[None, :]).sum(dim=1).max()) > MAX_UPDATE_RANK:
        return newton_chunk(SQUARED, default_tol=DEFAULT_TOL)(features, roles, pre, opts)
    weights = _woodbury(features, roles, shared, pre, opts.C)
    return weights.to(features.dtype), torch.isfinite(weights).all(dim=1)


def solve(data: FitData, labels: np.ndarray, rows: np.ndarray, opts: FitOptions) -> SolverOutput:
    return solve_in_chunks(data, labels, rows, opts, _ridge_chunk, "ridge")
