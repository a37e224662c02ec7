"""The one Fréchet distance of ``tav`` (FVD and FID share it), in float64.

For Gaussians fitted to two feature sets,

    d² = ‖μ_a − μ_b‖² + Tr(Σ_a) + Tr(Σ_b) − 2 Tr((Σ_a Σ_b)^{1/2}).

``frechet_from_stats`` takes the trace term from the eigenvalues of the symmetric PSD matrix
``√Σ_a Σ_b √Σ_a``, which has the same eigenvalues as ``Σ_a Σ_b`` (``trace_sqrt_product``). Both come from
``eigh``, so the result is real and correct when N < D and the covariances are singular.
Accuracy against an exact reference (float64): about 1e-10 relative at N=2048,
D=64; 1e-15 at N=50, D=400; a set against itself gives |d| < 1e-11·Tr(Σ) (measured at D <= 400).

``frechet_scipy`` is the pytorch-fid route (``scipy.linalg.sqrtm`` of the non-symmetric product, an
``eps·I`` retry, the imaginary part dropped) used by ``--protocol ta2v``; it returns the imaginary residual
so the caller can log it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg  # imported eagerly so that callers' BLAS thread limits (threadpoolctl) cover its OpenBLAS

ArrayLike = Any  # numpy array or torch.Tensor (duck-typed, so this module never imports torch)


def _as_float64(features: ArrayLike, name: str) -> np.ndarray:
    """``(N, D)`` numpy/torch array of any float dtype -> float64 numpy; checks shape and finiteness."""
    if hasattr(features, "detach"):  # torch.Tensor, on any device, possibly requiring grad
        features = features.detach().cpu().double().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected an (N, D) feature array with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def frechet_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``features (N, D)`` -> ``(mu (D,), sigma (D, D))`` in float64; unbiased covariance (ddof=1, as ``np.cov``)."""
    x = _as_float64(features, "features")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _resolvable(eigenvalues: np.ndarray) -> np.ndarray:
    """Mask of eigenvalues above the rounding floor ``n · eps · max|λ|`` (as ``numpy.linalg.matrix_rank``).

    Below it an eigenvalue of a computed PSD matrix is indistinguishable from 0; keeping it would add
    ``sqrt(noise)`` per null direction, which dominates the error when N < D.
    """
    floor = eigenvalues.shape[0] * np.finfo(np.float64).eps * float(np.abs(eigenvalues).max())
    return eigenvalues > floor


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``Tr((Σ_a Σ_b)^{1/2})`` for symmetric PSD ``(D, D)`` matrices, via ``√Σ_a Σ_b √Σ_a``.

    With ``Σ_a = V diag(w) Vᵀ`` restricted to its numerically non-zero eigenvalues (rank r; r <= N - 1 for
    a covariance of N samples), the non-zero eigenvalues of ``Σ_a Σ_b`` are those of the ``(r, r)`` PSD
    matrix ``Rᵀ Σ_b R`` with ``R = V diag(√w)`` (``R Rᵀ = Σ_a``, so ``Rᵀ Σ_b R`` is ``√Σ_a Σ_b √Σ_a`` in
    the eigenbasis of ``Σ_a``). Its rounding-level negative eigenvalues are clipped to 0. Dropping the
    null directions of ``Σ_a`` first matters: each one kept would add ``sqrt(rounding noise)`` to the
    trace. Pass the lower-rank matrix (fewer samples) as ``sigma_a``; the trace is symmetric in a, b.
    Source of the symmetric form: tf-gan ``trace_sqrt_product``,
    https://github.com/tensorflow/gan/blob/master/tensorflow_gan/python/eval/classifier_metrics.py
    """
    w, v = np.linalg.eigh(sigma_a)
    keep = _resolvable(w)
    if not keep.any():
        return 0.0
    root = v[:, keep] * np.sqrt(w[keep])  # (D, r): root @ root.T = Σ_a
    inner = root.T @ sigma_b @ root
    inner = (inner + inner.T) / 2  # exact symmetry; the product is symmetric only up to rounding
    lam = np.linalg.eigvalsh(inner)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def _check_stats(mu1, s1, mu2, s2) -> tuple[np.ndarray, ...]:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"Fréchet statistics do not match: mu {mu1.shape} / {mu2.shape}, "
                         f"sigma {s1.shape} / {s2.shape}")
    return mu1, s1, mu2, s2


def frechet_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1 (D,), s1 (D, D))`` and ``N(mu2, s2)`` in float64 (symmetric eigen route).

    With unequal sample counts, pass the statistics of the smaller set first (see ``trace_sqrt_product``).
    """
    mu1, s1, mu2, s2 = _check_stats(mu1, s1, mu2, s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Fréchet distance between two feature sets ``(N_a, D)`` and ``(N_b, D)`` (numpy or torch, any float dtype).

    Float64 means and unbiased covariances, then ``frechet_from_stats``. Valid for any N >= 2, including
    N < D (the covariances are then singular). This is the public contract the metric checks call.
    """
    a = _as_float64(features_a, "features_a")
    b = _as_float64(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    if b.shape[0] < a.shape[0]:  # symmetric; the smaller set has the lower-rank covariance, decomposed first
        a, b = b, a
    return frechet_from_stats(*frechet_stats(a), *frechet_stats(b))


def frechet_scipy(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray,
                  eps: float = 1e-6) -> tuple[float, float]:
    """The pytorch-fid / TA2V ``fid.py`` computation: ``(distance, imaginary residual)``.

    ``scipy.linalg.sqrtm(s1 @ s2)``; if the result is not finite, retried with ``eps`` added to both
    diagonals; the imaginary part is dropped. The residual is the largest ``|imag|`` on the diagonal of
    the square root (0.0 for a real result): upstream raises when it exceeds 1e-3, we return it so the
    caller can log or enforce that. Route: pytorch-fid ``calculate_frechet_distance``,
    https://github.com/mseitzer/pytorch-fid/blob/master/src/pytorch_fid/fid_score.py
    """
    mu1, s1, mu2, s2 = _check_stats(mu1, s1, mu2, s2)
    root = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(root).all():
        offset = np.eye(s1.shape[0]) * eps
        root = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    residual = 0.0
    if np.iscomplexobj(root):
        residual = float(np.abs(np.diagonal(root).imag).max())
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(root)), residual
