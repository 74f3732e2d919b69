"""ShrinkConnect (Van Nguyen et al., MICCAI 2015): a few hidden units whose linear combinations reproduce all.

Given the responses `H (N, n)` of n hidden units on N training voxels, choose a support S of k units and
coefficients `coef (k, n)`, `offset (n,)` such that

    H  ~  H[:, S] @ coef + offset          (every unit's response, a simultaneous-sparse fit)

by simultaneous orthogonal matching pursuit (Tropp, Gilbert & Strauss 2006): at each step add the unit whose
(centred, normalised) response correlates most, in l2 norm over all n residual columns, with the residual,
then refit all columns by least squares on the chosen units. The offset is an always-present constant unit
(the fit is a least-squares fit with an intercept), which costs no multiplication once folded into the next
layer's bias. The selection works on the n x n Gram matrices (float64); the final coefficients are a direct
least-squares solve (numpy lstsq) on the chosen columns.

Folding the fit into a network is the network's business (`kfjax.nn.lsdn.compress`): W' = coef @ W_next.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SparseFit", "simultaneous_omp", "least_squares_fit"]


@dataclasses.dataclass(frozen=True)
class SparseFit:
    """A simultaneous-sparse fit of `n` responses by `k` of them (see the module docstring)."""

    support: np.ndarray  # (k,) int: the kept units, in the order chosen
    coef: np.ndarray  # (k, n) float64: H ~ H[:, support] @ coef + offset
    offset: np.ndarray  # (n,) float64
    relative_error: float  # ||H - fit||_F / ||H - mean(H)||_F on the fitted voxels (0: exact; 1: the mean only)


def least_squares_fit(responses: np.ndarray, support: np.ndarray) -> SparseFit:
    """The least-squares fit (with an intercept) of every column of `responses (N, n)` by the columns in
    `support`: numpy lstsq on the centred columns (the intercept is the mean's remainder)."""
    h = np.asarray(responses, np.float64)
    support = np.asarray(support, np.int64)
    mean = h.mean(axis=0)
    centred = h - mean
    coef = np.linalg.lstsq(centred[:, support], centred, rcond=None)[0]
    offset = mean - mean[support] @ coef
    residual = centred - centred[:, support] @ coef
    scale = np.linalg.norm(centred)
    error = float(np.linalg.norm(residual) / scale) if scale > 0 else 0.0
    return SparseFit(support, coef, offset, error)


def simultaneous_omp(responses: np.ndarray, k: int) -> SparseFit:
    """Choose `k` of the `n` columns of `responses (N, n)` by simultaneous OMP and fit all columns on them.

    Each step picks argmax_j ||d_j^T R||_2 / ||d_j|| over the unchosen centred columns d_j (R: the centred
    residual of all columns), then refits. Columns with no variance (constant units, represented exactly by
    the intercept) are never chosen while a varying one remains.
    """
    h = np.asarray(responses, np.float64)
    if h.ndim != 2:
        raise ValueError(f"responses must be (N voxels, n units), got shape {h.shape}")
    n = h.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} units to keep must be in 1..{n}")
    d = h - h.mean(axis=0)
    gram = d.T @ d  # (n, n): d_j^T d_i, all the selection needs
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    tiny = norms <= 1e-12 * max(float(norms.max()), 1e-300)
    support: list[int] = []
    corr = gram.copy()  # d^T R with R = d at the start
    for _ in range(k):
        score = np.linalg.norm(corr, axis=1) / np.where(tiny, 1.0, norms)
        score[tiny] = -1.0  # constants last: the intercept already holds them
        score[support] = -np.inf
        support.append(int(np.argmax(score)))
        s = np.asarray(support)
        coef = np.linalg.lstsq(gram[np.ix_(s, s)], gram[s], rcond=None)[0]  # normal equations on the Grams
        corr = gram - gram[:, s] @ coef  # d^T (d - d_S coef)
    return least_squares_fit(h, np.asarray(support, np.int64))
