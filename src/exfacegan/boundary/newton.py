"""Batched truncated-Newton (Newton-CG) for L2-regularised linear classifiers, many references at once.

Every reference r minimises, over w in R^D (features carry a constant-1 column, so the intercept is a
regularised weight as in liblinear with intercept_scaling = 1),

    f_r(w) = 0.5 * ||w||^2 + sum_i c_ri * loss(y_ri * x_i . w)

on ONE shared feature matrix X [M, D]; references differ only in their targets y_r (+-1) and per-code costs
c_r (C on their training codes, 0 elsewhere: balancing, validation and left-out codes are masks, not
copies). Each Newton step solves (I + X' diag(c_r * loss'') X) s = -grad by preconditioned conjugate
gradients whose Hessian-vector products for all references are two dense matrix products (P @ X' and
weights @ X): GEMM-bound, O(M D) per reference and product, and no D x D Hessian is ever formed. The
preconditioner is the exact diagonal of each reference's Hessian in the eigenbasis of X'X (one shared
eigendecomposition): exact when every code is weighted equally, and close when the weighted codes are a
random or mostly shared subset. The step length is a safeguarded one-dimensional Newton search on the
exact objective along the step, reusing X s accumulated during CG; one Newton iteration costs 2 products
per CG step plus 2 (gradient and preconditioner).

Stopping follows liblinear's primal solvers: ||grad f(w)|| <= tol * max(min(#pos, #neg), 1) / #train *
||grad f(0)||, with tol = 1e-4 the default of scikit-learn's LinearSVC and LogisticRegression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Loss:
    """A margin loss, given by its derivatives in the margin m = y * x.w (all return new tensors).

    first(m) = loss'(m); second(m) = loss''(m) (a generalised second derivative for the squared hinge).
    """

    name: str
    first: Callable[[Tensor], Tensor]
    second: Callable[[Tensor], Tensor]
    quadratic: bool = False


SQUARED_HINGE = Loss(
    "squared_hinge",
    first=lambda m: torch.rsub(m, 1).clamp_(min=0).mul_(-2),
    second=lambda m: (m < 1).to(m.dtype).mul_(2),
)
LOGISTIC = Loss(
    "logistic",
    first=lambda m: torch.sigmoid(-m).neg_(),
    second=lambda m: torch.sigmoid(m).mul_(torch.sigmoid(-m)),
)
SQUARED = Loss(
    "squared",
    first=lambda m: torch.rsub(m, 1).mul_(-2),
    second=lambda m: torch.full_like(m, 2.0),
    quadratic=True,
)


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products of two [r, n] tensors (a batched matrix product, no [r, n] temporary)."""
    return torch.einsum("ij,ij->i", a, b)


class EigenPreconditioner:
    """Per-reference diagonal of I + X' diag(h_r) X in the eigenbasis of X' diag(v) X, shared by all references.

    With v the codes most references train on, the preconditioner is exactly the Hessian of any reference
    that trains on those codes, so CG for a reference whose training set differs in k codes converges in
    about k + 1 steps (the effect of a Woodbury update, without forming one).
    """

    def __init__(self, features: Tensor, row_weights: Tensor | None = None) -> None:
        weighted = features if row_weights is None else features * row_weights[:, None]
        self.row_weights = row_weights
        self.eigenvalues, self.basis64 = torch.linalg.eigh(weighted.T.double() @ features.double())
        self.basis = self.basis64.to(features.dtype)
        self.squares = (features @ self.basis).square_()

    def diagonal(self, weights: Tensor) -> Tensor:
        return torch.addmm(torch.ones((), dtype=weights.dtype, device=weights.device), weights, self.squares)

    def apply(self, vectors: Tensor, diagonal: Tensor) -> Tensor:
        return ((vectors @ self.basis) / diagonal) @ self.basis.T


@dataclass
class NewtonResult:
    weights: Tensor  # [r, D]
    iterations: Tensor  # [r] Newton iterations
    converged: Tensor  # [r] bool
    products: int = 0  # reference-sized products with X (rows x products), for benchmarks


def liblinear_tolerance(targets: Tensor, costs: Tensor, tol: float) -> Tensor:
    """liblinear's relative gradient tolerance per reference: tol * max(min(#pos, #neg), 1) / #train."""
    train = costs > 0
    positive = (train & (targets > 0)).sum(dim=1)
    negative = (train & (targets < 0)).sum(dim=1)
    count = train.sum(dim=1).clamp(min=1)
    return tol * torch.minimum(positive, negative).clamp(min=1).to(costs.dtype) / count.to(costs.dtype)


def _conjugate_gradient(
    features: Tensor, features_t: Tensor, weights: Tensor, gradient: Tensor, preconditioner: EigenPreconditioner,
    tolerance: Tensor, max_steps: int,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Solve (I + X' diag(weights) X) s = -gradient per row; returns s, X s per row, the residual, steps."""
    diagonal = preconditioner.diagonal(weights)
    residual = -gradient
    step = torch.zeros_like(gradient)
    projected = torch.zeros_like(weights)  # X s, accumulated from the products CG computes anyway
    along = torch.empty_like(weights)  # preallocated: fresh [r, M] tensors each step cost page faults
    weighted = torch.empty_like(weights)
    preconditioned = preconditioner.apply(residual, diagonal)
    direction = preconditioned.clone()
    rho = rowdot(residual, preconditioned)
    active = residual.norm(dim=1) > tolerance
    tiny = torch.finfo(gradient.dtype).tiny
    steps = 0
    while steps < max_steps and bool(active.any()):
        steps += 1
        torch.mm(direction, features_t, out=along)
        torch.mul(weights, along, out=weighted)
        product = torch.addmm(direction, weighted, features)
        alpha = torch.where(active, rho / rowdot(direction, product).clamp(min=tiny), 0.0)
        step.addcmul_(alpha[:, None], direction)
        projected.addcmul_(alpha[:, None], along)
        residual.addcmul_(alpha[:, None], product, value=-1)
        active &= residual.norm(dim=1) > tolerance
        preconditioned = preconditioner.apply(residual, diagonal)
        rho_next = rowdot(residual, preconditioned)
        beta = torch.where(active, rho_next / rho.clamp(min=tiny), 0.0)
        direction = preconditioned.addcmul_(beta[:, None], direction)
        rho = rho_next
    return step, projected, residual, steps


def _line_search(
    loss: Loss, slope0: Tensor, along_w: Tensor, along_s: Tensor, margins: Tensor, signed_projection: Tensor,
    costs: Tensor, max_steps: int, accuracy: float,
) -> Tensor:
    """t > 0 per row with |phi'(t)| <= accuracy * |phi'(0)|, phi(t) = f(w + t s): safeguarded Newton on the
    increasing phi', starting from the full step t = 1 (accepted at once near the solution)."""
    weighted = costs * signed_projection
    weighted_sq = weighted * signed_projection
    t = torch.ones_like(slope0)
    low, high = torch.zeros_like(t), torch.full_like(t, float("inf"))
    open_ = slope0 < 0
    for _ in range(max_steps):
        if not open_.any():
            break
        moved = torch.addcmul(margins, signed_projection, t[:, None])
        slope = along_w + t * along_s + rowdot(loss.first(moved), weighted)
        curvature = along_s + rowdot(loss.second(moved), weighted_sq)
        del moved
        open_ &= slope.abs() > accuracy * slope0.abs()
        low = torch.where(open_ & (slope < 0), t, low)
        high = torch.where(open_ & (slope > 0), t, high)
        proposal = t - slope / curvature
        bisect = torch.where(torch.isinf(high), 2 * t, (low + high) / 2)
        t = torch.where(open_, torch.where((proposal > low) & (proposal < high), proposal, bisect), t)
    return torch.where(slope0 < 0, t, torch.zeros_like(t))


def newton_cg(
    features: Tensor, targets: Tensor, costs: Tensor, loss: Loss, *,
    preconditioner: EigenPreconditioner | None = None, tol: float = 1e-4, max_iter: int = 50,
    max_cg: int | None = None, line_search_steps: int = 10, line_search_accuracy: float = 0.1,
) -> NewtonResult:
    """Minimise f_r for every row r of `targets`/`costs` [r, M] on `features` [M, D], from w = 0.

    `max_cg` caps CG steps per Newton step (default 10: a truncated step and another Newton iteration are
    cheaper than long CG runs when the active set is small; for a quadratic loss, 500: one exact solve).
    """
    max_cg = max_cg or (500 if loss.quadratic else 10)
    preconditioner = preconditioner or EigenPreconditioner(features)
    features_t = features.T.contiguous()
    count, dim = targets.shape[0], features.shape[1]
    relative = liblinear_tolerance(targets, costs, tol)
    weights_out = torch.zeros((count, dim), dtype=features.dtype, device=features.device)
    iterations = torch.zeros(count, dtype=torch.long, device=features.device)
    converged = torch.zeros(count, dtype=torch.bool, device=features.device)
    # Working set: the references not converged yet, compacted as they finish.
    rows = torch.arange(count, device=features.device)
    y, c, w, z = targets, costs, weights_out.clone(), torch.zeros_like(targets)
    signed_costs = c * y
    initial_norm = None
    products = 0
    for iteration in range(max_iter + 1):
        margins = y * z
        gradient = torch.addmm(w, loss.first(margins).mul_(signed_costs), features)
        products += len(rows)
        norm = gradient.norm(dim=1)
        if initial_norm is None:
            initial_norm = norm
        done = norm <= relative[rows] * initial_norm
        if iteration == max_iter:
            done = torch.ones_like(done)
        if done.any():
            finished = rows[done]
            weights_out[finished] = w[done]
            iterations[finished] = iteration
            converged[finished] = norm[done] <= relative[finished] * initial_norm[done]
            keep = ~done
            if not keep.any():
                break
            rows, y, c, signed_costs, w, z, margins, gradient = (
                t[keep] for t in (rows, y, c, signed_costs, w, z, margins, gradient)
            )
            norm, initial_norm = norm[keep], initial_norm[keep]
        hessian_weights = loss.second(margins).mul_(c)
        if loss.quadratic:
            tolerance = relative[rows] * initial_norm
        else:  # inexact Newton forcing term: loose far from the solution, tighter near it
            tolerance = (norm / initial_norm).sqrt().clamp(max=0.1) * norm
        step, projected, residual, cg_steps = _conjugate_gradient(
            features, features_t, hessian_weights, gradient, preconditioner, tolerance, max_cg,
        )
        del hessian_weights
        products += len(rows) * (1 + 2 * cg_steps)
        if loss.quadratic:  # exact minimiser along the step: t = 1; the new gradient is -residual
            weights_out[rows] = w + step
            iterations[rows] = iteration + 1
            converged[rows] = residual.norm(dim=1) <= tolerance * 1.0001
            break
        t = _line_search(loss, rowdot(gradient, step), rowdot(w, step), rowdot(step, step), margins,
                         projected.mul_(y), c, line_search_steps, line_search_accuracy)
        w = w.addcmul_(t[:, None], step)
        z = z.addcmul_(t[:, None], projected.mul_(y))  # projected held y * X s; y * y = 1
    return NewtonResult(weights_out, iterations, converged, products)
