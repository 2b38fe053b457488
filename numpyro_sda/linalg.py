r"""Matrix-free linear algebra for guidance: GMRES, conjugate gradient, dense solves.

The moment-matching posterior sampler (MMPS) needs :math:`u = M^{-1} r` for the symmetric
positive-definite operator :math:`M = \Sigma_y + A\, \mathrm{Cov}[x \mid x_t]\, A^\top`, which is
only available as a matrix-vector product (a JVP/VJP through the denoiser). The conjugate
gradient method (Hestenes & Stiefel, 1952) solves :math:`M u = r` with one product per
iteration:

.. math::
    \alpha_k = \frac{r_k^\top r_k}{p_k^\top M p_k}, \quad
    u_{k+1} = u_k + \alpha_k p_k, \quad r_{k+1} = r_k - \alpha_k M p_k, \quad
    p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}{r_k^\top r_k} p_k .

In exact arithmetic it converges in at most :math:`\dim r` iterations. The loop is a
:func:`jax.lax.while_loop` (stops at ``maxiter`` or when :math:`\|r_k\| \le \mathrm{tol}\,
\|r_0\|`), so it can be jitted and vmapped.

CG assumes :math:`M` symmetric. With a *learned* noise predictor the Jacobian of the denoiser is
not symmetric, so neither is :math:`M`; :func:`gmres` (Saad & Schultz, 1986) makes no such
assumption: after :math:`k` Arnoldi steps it returns the minimiser of :math:`\|b - M u\|` over
the Krylov space :math:`\mathcal{K}_k(M, b) = \mathrm{span}\{b, Mb, \dots, M^{k-1} b\}`,

.. math:: u_k = V_k z, \qquad z = \arg\min_z \big\| \|b\| e_1 - \bar H_k z \big\|,

with :math:`V_k` the orthonormal Arnoldi basis (modified Gram-Schmidt, one re-orthogonalisation)
and :math:`\bar H_k` the :math:`(k+1) \times k` Hessenberg matrix. :math:`k = \dim b` is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["conjugate_gradient", "gmres", "dense_matrix"]


def _dot(a, b) -> Array:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda u, v: jnp.vdot(u, v), a, b))
    return sum(leaves)


def conjugate_gradient(
    matvec: Callable[[Array], Array],
    b: Array,
    x0: Array | None = None,
    maxiter: int = 16,
    tol: float = 1e-6,
    floor: Callable[[Array], Array] | None = None,
) -> Array:
    r"""Solve :math:`M x = b` for a symmetric positive-definite ``matvec`` by conjugate gradient.

    Args:
        matvec: the linear map :math:`v \mapsto M v` (any pytree of arrays to the same pytree).
        b: right-hand side.
        x0: starting point (default zero).
        maxiter: maximum number of iterations (each costs one ``matvec``).
        tol: relative residual tolerance :math:`\|r_k\| \le \mathrm{tol}\, \|b\|`.
        floor: optional :math:`p \mapsto p^\top N p` for a known part :math:`N` of
            :math:`M = N + K` where :math:`K` is positive semi-definite in exact arithmetic.
            When a search direction has :math:`p^\top M p < p^\top N p` (negative curvature
            of :math:`K`, i.e. :math:`K` is dominated by round-off), the iteration stops and
            keeps the current iterate (truncated CG, as in Steihaug, 1983).

    Returns:
        the approximate solution, with the structure of ``b``.
    """
    if maxiter < 1:
        raise ValueError(f"maxiter must be >= 1, got {maxiter}")
    tree_map = jax.tree_util.tree_map
    x = tree_map(jnp.zeros_like, b) if x0 is None else x0
    r = b if x0 is None else tree_map(lambda u, v: u - v, b, matvec(x0))
    p = r
    rs = _dot(r, r)
    tiny = jnp.finfo(jnp.result_type(rs)).tiny
    threshold = (tol**2) * _dot(b, b)

    def cond(state):
        _, _, _, rs, k = state
        return (k < maxiter) & (rs > threshold) & (rs > tiny)

    def body(state):
        x, r, p, rs, k = state
        mp = matvec(p)
        pmp = _dot(p, mp)
        if floor is not None:
            pmp = jnp.where(pmp >= floor(p), pmp, 0.0)
        alpha = rs / jnp.where(pmp > 0, pmp, 1.0)
        alpha = jnp.where(pmp > 0, alpha, 0.0)  # non-positive curvature: stop moving
        x = tree_map(lambda u, v: u + alpha * v, x, p)
        r = tree_map(lambda u, v: u - alpha * v, r, mp)
        rs_new = _dot(r, r)
        beta = rs_new / jnp.maximum(rs, tiny)
        p = tree_map(lambda u, v: u + beta * v, r, p)
        rs_new = jnp.where(pmp > 0, rs_new, 0.0)
        return x, r, p, rs_new, k + 1

    x, *_ = jax.lax.while_loop(cond, body, (x, r, p, rs, jnp.asarray(0)))
    return x


def gmres(matvec: Callable[[Array], Array], b: Array, iterations: int = 1) -> Array:
    r"""Solve :math:`M u = b` approximately by ``iterations`` steps of GMRES (no restart).

    Args:
        matvec: the linear map :math:`v \mapsto M v` on flat vectors (any square operator).
        b: right-hand side, a flat vector.
        iterations: Krylov dimension :math:`k \ge 1` (one ``matvec`` each).

    Returns:
        :math:`u_k`, the minimum-residual solution over :math:`\mathcal{K}_k(M, b)`. A breakdown
        (the Krylov space is invariant, so the solution is exact) is handled by masking.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    k = int(iterations)
    n = b.shape[0]
    beta = jnp.linalg.norm(b)
    tiny = jnp.finfo(b.dtype).tiny
    V = jnp.zeros((k + 1, n), b.dtype).at[0].set(b / jnp.maximum(beta, tiny))
    H = jnp.zeros((k + 1, k), b.dtype)

    def arnoldi(j, carry):
        V, H = carry
        w = matvec(V[j])
        active = (jnp.arange(k + 1) <= j).astype(b.dtype)
        for _ in range(2):  # classical Gram-Schmidt, twice (as stable as modified G-S)
            h = (V @ w) * active
            w = w - h @ V
            H = H.at[:, j].add(h)
        norm = jnp.linalg.norm(w)
        H = H.at[j + 1, j].set(norm)
        V = V.at[j + 1].set(jnp.where(norm > tiny, w / jnp.maximum(norm, tiny), 0.0))
        return V, H

    V, H = jax.lax.fori_loop(0, k, arnoldi, (V, H))
    e1 = jnp.zeros((k + 1,), b.dtype).at[0].set(beta)
    z = jnp.linalg.lstsq(H, e1)[0]
    return jnp.where(beta > tiny, z @ V[:k], jnp.zeros_like(b))


def dense_matrix(matvec: Callable[[Array], Array], n: int, dtype=jnp.float32) -> Array:
    """The ``(n, n)`` matrix of a linear map on flat vectors (``n`` batched products)."""
    basis = jnp.eye(n, dtype=dtype)
    return jax.vmap(matvec, out_axes=1)(basis)
