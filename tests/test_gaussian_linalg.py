"""Unit checks of the factored linear algebra and the metric formulas against direct numpy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from madloop.linalg import bartlett, draw_stats, log_det, stats_from_points
from madloop.metrics.gaussian import gaussian_metrics
from madloop.models.gaussian import GaussianFamily
from madloop.types import Points, Stats


@pytest.mark.parametrize("shape", [(3, 50, 4), (2, 4, 4), (2, 3, 5), (1, 2, 3), (4, 1000, 2)])
def test_stats_from_points_matches_numpy(shape):
    rng = np.random.default_rng(0)
    X = 5.0 + rng.standard_normal(shape) @ np.diag(np.arange(1, shape[2] + 1.0))
    mean, L = stats_from_points(X)
    assert np.allclose(np.triu(L, 1), 0)
    for r in range(shape[0]):
        Xc = X[r] - X[r].mean(axis=0)
        np.testing.assert_allclose(mean[r], X[r].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(L[r] @ L[r].T, Xc.T @ Xc, rtol=1e-9, atol=1e-9)
    m, d = shape[1:]
    if m - 1 < d:  # rank-deficient: exact zeros on the diagonal, log det = -inf
        assert np.isneginf(log_det(L)).all()


def test_stats_from_points_ill_conditioned_and_offset():
    """A batch far from the origin with a tiny spread is still fitted to full relative accuracy."""
    rng = np.random.default_rng(1)
    scales = np.array([1.0, 1e-5, 1e-9])
    X = 1e3 + rng.standard_normal((2, 40, 3)) * scales
    _, L = stats_from_points(X)
    for r in range(2):
        Xc = X[r] - X[r].mean(axis=0)
        want = np.linalg.slogdet(Xc.T @ Xc)[1]
        assert log_det(L[r]) == pytest.approx(want, rel=1e-6)


def test_stats_merge_is_exact():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((3, 7, 4)), 3 + 2 * rng.standard_normal((3, 11, 4))
    sa, sb = (Stats(np.full(3, x.shape[1]), *stats_from_points(x)) for x in (A, B))
    merged = Stats.merge([sa, sb])
    mean, L = stats_from_points(np.concatenate([A, B], axis=1))
    np.testing.assert_allclose(merged.mean, mean, rtol=1e-12)
    S = merged.factor @ np.swapaxes(merged.factor, 1, 2)
    np.testing.assert_allclose(S, L @ np.swapaxes(L, 1, 2), rtol=1e-10, atol=1e-10)


def test_bartlett_is_wishart():
    """E[A A^T] = k I and Var of the diagonal of a Wishart(I, k): 2k."""
    rng = np.random.default_rng(3)
    k, d, R = 6, 4, 40000
    A = bartlett(k, d, R, rng)
    assert np.allclose(np.triu(A, 1), 0)
    W = A @ np.swapaxes(A, 1, 2)
    se = np.sqrt(2 * k / R)
    assert np.all(np.abs(np.diagonal(W, axis1=1, axis2=2).mean(0) - k) < 5 * se)
    off = W[:, 0, 1]
    assert abs(off.mean()) < 5 * np.sqrt(k / R)
    assert np.diagonal(W, axis1=1, axis2=2).var(0) == pytest.approx(np.full(d, 2 * k), rel=0.05)
    A_low = bartlett(2, 4, 5, rng)  # dof < d: rank 2, zero diagonal beyond
    assert np.all(np.diagonal(A_low, axis1=1, axis2=2)[:, 2:] == 0)


@pytest.mark.parametrize("dof, d", [(6, 4), (2, 4), (0, 3), (1, 1), (99, 10)])
def test_bartlett_draws_in_a_fixed_order(dof, d):
    """The factor is built from exactly these generator calls, in this order: chi-squares as
    2 Gamma(k/2) for the first min(dof, d) diagonal entries, then the free sub-diagonal normals
    row by row (speed work must not change the numbers a seed gives)."""
    R, rank = 7, min(dof, d)
    A = bartlett(dof, d, R, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    want = np.zeros((R, d, d))
    if rank:
        chi2 = 2.0 * rng.standard_gamma((dof - np.arange(rank)) / 2.0, size=(R, rank))
        want[:, np.arange(rank), np.arange(rank)] = np.sqrt(chi2)
    slots = [(i, j) for i in range(d) for j in range(min(i, rank))]
    z = rng.standard_normal((R, len(slots)))
    for k, (i, j) in enumerate(slots):
        want[:, i, j] = z[:, k]
    assert np.array_equal(A, want)


@pytest.mark.parametrize("counts", [[50, 50, 50], [50, 20, 7], [50, 1, 9]])
def test_fit_stats_scales_each_chain_by_its_own_count(counts):
    """Covariance factor = scatter factor / sqrt(n - 1), chain by chain, to the last bit (one
    count for all chains takes a scalar product: the same numbers); a one-point chain is NaN."""
    rng = np.random.default_rng(6)
    count = np.array(counts)
    F = np.tril(rng.standard_normal((3, 4, 4)))
    model = GaussianFamily(3).fit_stats(Stats(count, rng.standard_normal((3, 4)), F))
    for r, n in enumerate(counts):
        if n > 1:
            assert np.array_equal(model.cov_factor_[r], F[r] * (1.0 / np.sqrt(n - 1.0)))
        else:
            assert np.isnan(model.cov_factor_[r]).all()


def test_draw_stats_law():
    """x̄ ~ N(μ, scale Σ/n) and E[S] = (n-1) scale Σ."""
    rng = np.random.default_rng(4)
    R, d, n, scale = 40000, 3, 9, 0.7
    L = np.linalg.cholesky(np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]]))
    mean = np.tile([1.0, -1.0, 0.0], (R, 1))
    xbar, F = draw_stats(mean, np.broadcast_to(L, (R, d, d)), n, rng, scale=scale)
    cov = L @ L.T
    np.testing.assert_allclose(np.cov(xbar.T), scale * cov / n, atol=6 * scale * 2 / n / np.sqrt(R))
    S = (F @ np.swapaxes(F, 1, 2)).mean(0)
    np.testing.assert_allclose(S, (n - 1) * scale * cov, atol=0.1)


def _reference_metrics(mu, cov, mu0, cov0):
    d = mu.size
    diff = mu - mu0
    root0 = scipy.linalg.sqrtm(cov0).real
    cross = scipy.linalg.sqrtm(root0 @ cov @ root0).real
    inv = np.linalg.inv(cov)
    return {
        "mean_error_sq": diff @ diff,
        "trace_ratio": np.trace(cov) / np.trace(cov0),
        "log_det_change": np.linalg.slogdet(cov)[1] - np.linalg.slogdet(cov0)[1],
        "wasserstein2": np.sqrt(max(diff @ diff + np.trace(cov + cov0 - 2 * cross), 0.0)),
        "kl_divergence": 0.5
        * (
            np.trace(inv @ cov0)
            + diff @ inv @ diff
            - d
            + np.linalg.slogdet(cov)[1]
            - np.linalg.slogdet(cov0)[1]
        ),
    }


@pytest.mark.parametrize("d", [1, 3, 10])
def test_metrics_match_direct_formulas(d):
    rng = np.random.default_rng(d)
    R = 5
    B = rng.standard_normal((d, d))
    cov0 = B @ B.T + d * np.eye(d)
    mu0 = rng.standard_normal(d)
    C = rng.standard_normal((R, d, d))
    covs = C @ np.swapaxes(C, 1, 2) + 0.5 * np.eye(d)
    mus = rng.standard_normal((R, d))
    got = gaussian_metrics(mus, np.linalg.cholesky(covs), mu0, np.linalg.cholesky(cov0))
    for r in range(R):
        want = _reference_metrics(mus[r], covs[r], mu0, cov0)
        for k, v in want.items():
            assert got[k][r] == pytest.approx(v, rel=1e-8, abs=1e-10), (k, r)


def test_metrics_at_the_truth_and_when_singular():
    d = 3
    L0 = np.linalg.cholesky(np.diag([1.0, 2.0, 3.0]))
    same = gaussian_metrics(np.zeros((1, d)), L0[None], np.zeros(d), L0)
    for k in ("mean_error_sq", "log_det_change", "kl_divergence"):
        assert same[k][0] == pytest.approx(0.0, abs=1e-12)
    assert same["trace_ratio"][0] == pytest.approx(1.0)
    assert same["wasserstein2"][0] == pytest.approx(0.0, abs=1e-6)
    sing = np.diag([1.0, 0.0, 1.0])[None]
    out = gaussian_metrics(np.zeros((1, d)), sing, np.zeros(d), L0)
    assert np.isneginf(out["log_det_change"][0]) and np.isposinf(out["kl_divergence"][0])
    assert np.isfinite(out["wasserstein2"][0])
    # a collapsed Σ_t = 1e-200 I: still finite, W2 = sqrt(tr Σ_0)
    tiny = gaussian_metrics(np.zeros((1, d)), 1e-100 * np.eye(d)[None], np.zeros(d), L0)
    assert tiny["wasserstein2"][0] == pytest.approx(np.sqrt(6.0), rel=1e-9)
    assert tiny["log_det_change"][0] == pytest.approx(-200 * d * np.log(10) - np.log(6), rel=1e-12)


def test_metrics_of_an_undefined_fit_are_nan_not_an_error():
    """A chain fitted on one point (unbiased: divide by 0) has a NaN covariance; its metrics are
    NaN while the other chains' are computed as usual."""
    L0 = np.eye(2)
    factor = np.stack([np.eye(2), np.full((2, 2), np.nan)])
    out = gaussian_metrics(np.zeros((2, 2)), factor, np.zeros(2), L0)
    for k in ("wasserstein2", "kl_divergence", "log_det_change", "trace_ratio"):
        assert np.isfinite(out[k][0]) and np.isnan(out[k][1]), k


def test_sklearn_style_family():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((2, 30, 3))
    model = GaussianFamily(replicates=2, covariance_estimator="mle")
    assert model.fit(X) is model
    np.testing.assert_allclose(model.covariance_[0], np.cov(X[0].T, bias=True), rtol=1e-10)
    model_u = GaussianFamily(replicates=2).fit(X)
    np.testing.assert_allclose(model_u.covariance_[1], np.cov(X[1].T), rtol=1e-10)
    draws = model_u.sample(5000, bias=0.5, rng=rng)
    assert draws.shape == (2, 5000, 3)
    np.testing.assert_allclose(np.cov(draws[0].T), 0.5 * model_u.covariance_[0], atol=0.1)
    state = model_u.get_state()
    clone = GaussianFamily(replicates=2)
    clone.set_state(state)
    a = clone.sample_points(4, bias=1.0, rng=np.random.default_rng(9)).global_X()
    b = model_u.sample_points(4, bias=1.0, rng=np.random.default_rng(9)).global_X()
    np.testing.assert_array_equal(a, b)


def test_provenance_counts_of_a_union():
    rng = np.random.default_rng(6)
    a = Points.tagged(rng.standard_normal((2, 3, 2)), source=0, origin=0)
    b = Points.tagged(rng.standard_normal((2, 5, 2)), source=1, origin=4)
    u = Points.concat([a, b, a])
    counts = u.provenance_counts()
    assert set(counts) == {(0, 0), (1, 4)}
    np.testing.assert_array_equal(counts[(0, 0)], [6, 6])
    np.testing.assert_array_equal(counts[(1, 4)], [5, 5])
    sub = u.take(np.array([[0, 1, 3], [3, 4, 5]]))
    c = sub.provenance_counts()
    np.testing.assert_array_equal(c[(0, 0)], [2, 0])
    np.testing.assert_array_equal(c[(1, 4)], [1, 3])


# --- the W2 cross term: Gram route (eigvalsh of M^T M) against the SVD route -------------------

_EPS = np.finfo(float).eps


def _svd_w2(mean, factor, mean0, factor0):
    """W2 with the cross term from the SVD, the arithmetic of the route it stands beside; also
    the scale ||μ_t - μ_0||² + tr Σ_t + tr Σ_0 of the cancellation W2² = scale - 2 nuclear."""
    diff = mean - mean0
    scale = np.einsum("ri,ri->r", diff, diff) + np.einsum("rij,rij->r", factor, factor)
    scale = scale + float(np.sum(factor0 * factor0))
    nuclear = np.linalg.svd(factor0.T @ factor, compute_uv=False).sum(axis=-1)
    return np.sqrt(np.maximum(scale - 2.0 * nuclear, 0.0)), scale


def _procrustes_w2(mean, factor, mean0, factor0):
    """W2 without the cancellation: ||μ_t - μ_0||² + ||L_0 - L_t Q||_F² with Q the orthogonal
    polar factor of L_t^T L_0 (W2² = min over orthogonal Q), a sum of squares whose error is
    second order in Q's."""
    U, _, Vt = np.linalg.svd(np.swapaxes(factor, 1, 2) @ factor0)
    delta = factor0 - factor @ (U @ Vt)
    diff = mean - mean0
    return np.sqrt(np.einsum("ri,ri->r", diff, diff) + np.einsum("rij,rij->r", delta, delta))


def _lower(F):
    """A lower-triangular factor of F F^T (QR of F^T: no squaring, fine when collapsed)."""
    return np.swapaxes(np.linalg.qr(np.swapaxes(F, -1, -2), mode="r"), -1, -2)


def _rotation(rng, *shape):
    q, r = np.linalg.qr(rng.standard_normal((*shape, 10, 10)))
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def _w2_cases():
    """Σ_0 factors and batches of fits (mean, factor) of d = 10 Gaussians: well-conditioned fits
    of 100 points, fits of an ill-conditioned Σ_0 (eigenvalues 1e-8..1), Σ_t = Q D² Q^T collapsed
    by D = 1e-6 in three randomly oriented directions, and Σ_t = Σ_0 to 1e-4 with the real mean
    (W2 ~ 1e-4)."""
    rng = np.random.default_rng(14)
    d, R, n = 10, 40, 100
    B = rng.standard_normal((d, d))
    well0 = np.linalg.cholesky(B @ B.T / d + np.eye(d))
    ill0 = _lower((_rotation(rng) * np.sqrt(np.geomspace(1e-8, 1.0, d)))[None])[0]

    def fits(L0, scale=1.0):  # Σ_t = L0 W L0^T, W ~ Wishart(I, n - 1) / (n - 1)
        Z = rng.standard_normal((R, n - 1, d)) / np.sqrt(n - 1)
        chol = np.linalg.cholesky(np.swapaxes(Z, 1, 2) @ Z)
        return scale * rng.standard_normal((R, d)), _lower(L0 @ chol)

    collapse = np.ones(d)
    collapse[:3] = 1e-6
    near = np.eye(d) + 1e-4 * rng.standard_normal((R, d, d))
    return {
        "well": (well0, *fits(well0, 0.3)),
        "ill-sigma0": (ill0, *fits(ill0, 1e-3)),
        "collapsed": (
            well0,
            0.3 * rng.standard_normal((R, d)),
            _lower(_rotation(rng, R) * collapse),
        ),
        "near": (well0, np.zeros((R, d)), _lower(well0 @ near)),
    }


@pytest.fixture
def svd_calls(monkeypatch):
    """Matrices the metrics hand to the SVD (the Gram route's fallback)."""
    calls: list[int] = []
    svd = np.linalg.svd

    def counting(a, *args, **kwargs):
        calls.append(int(np.prod(np.shape(a)[:-2])))
        return svd(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", counting)
    return calls


def _assert_w2_as_svd(got, want, scale, rel):
    # Gram route: |δW2²| <= rel W2² by its acceptance test; both routes round the cancellation
    # scale - 2 nuclear at a few d eps scale (a generous 8 d eps)
    tol = rel * want**2 + 8 * 10 * _EPS * scale
    np.testing.assert_array_less(np.abs(got**2 - want**2), tol)


@pytest.mark.parametrize("case", ["well", "ill-sigma0", "collapsed", "near"])
def test_w2_gram_route_matches_the_svd(case, svd_calls):
    from madloop.metrics.gaussian import GRAM_SVD_PARITY, GRAM_W2_REL

    L0, mean, factor = _w2_cases()[case]
    got = gaussian_metrics(mean, factor, np.zeros(10), L0)["wasserstein2"]
    n_svd = sum(svd_calls)
    want, scale = _svd_w2(mean, factor, np.zeros(10), L0)
    _assert_w2_as_svd(got, want, scale, GRAM_W2_REL)
    if case in ("well", "near"):  # the fast route is the one taken when it is accurate
        assert n_svd == 0  # near: W2² cancels, but M is well conditioned (SVD parity)
    else:  # near-singular M, or ill-conditioned with W2² small: the SVD, bit for bit
        assert n_svd == len(mean)
        np.testing.assert_array_equal(got, want)
    if case == "near":  # W2 ~ 1e-4 of a cancellation at scale ~ 20: against a reference free
        # of it, the Gram route is as close as the SVD's own bound allows (parity)
        assert np.all((want > 1e-5) & (want < 1e-2))
        truth = _procrustes_w2(mean, factor, np.zeros(10), L0)
        svd_err, gram_err = np.abs(want**2 - truth**2), np.abs(got**2 - truth**2)
        assert svd_err.max() <= 8 * 10 * _EPS * scale.max()  # the SVD within its bound
        np.testing.assert_array_less(gram_err, GRAM_SVD_PARITY * 8 * 10 * _EPS * scale)
        np.testing.assert_allclose(got, truth, rtol=1e-7, atol=0)


def test_w2_gram_route_alone_would_lose_digits(monkeypatch):
    """Why the fallback exists: the Gram route for every chain misses the tolerance on a Σ_t
    collapsed in randomly oriented directions (its small singular values come out of λ_i with
    error ~ eps λ_max / σ_i: up to 6e-11 in the nuclear norm against the SVD's 1e-15)."""
    import madloop.metrics.gaussian as gm

    L0, mean, factor = _w2_cases()["collapsed"]
    want, scale = _svd_w2(mean, factor, np.zeros(10), L0)
    tol = gm.GRAM_W2_REL * want**2 + 8 * 10 * _EPS * scale
    monkeypatch.setattr(gm, "GRAM_W2_REL", np.inf)
    monkeypatch.setattr(gm, "GRAM_SVD_PARITY", np.inf)
    got = gaussian_metrics(mean, factor, np.zeros(10), L0)["wasserstein2"]
    assert np.max(np.abs(got**2 - want**2) / tol) > 1  # 14x over it with this seed


def test_w2_routes_mixed_in_one_batch(svd_calls):
    """Well-conditioned, collapsed, near and undefined (NaN) chains against one Σ_0: each chain
    gets the value it gets alone, NaN stays NaN, and only the collapsed go to the SVD."""
    from madloop.metrics.gaussian import GRAM_W2_REL

    cases = _w2_cases()
    parts = [cases[k] for k in ("well", "collapsed", "near")]
    L0 = parts[0][0]
    mean = np.concatenate([p[1][:5] for p in parts] + [np.zeros((1, 10))])
    factor = np.concatenate([p[2][:5] for p in parts] + [np.full((1, 10, 10), np.nan)])
    order = np.random.default_rng(3).permutation(len(mean))
    mean, factor = mean[order], factor[order]
    got = gaussian_metrics(mean, factor, np.zeros(10), L0)["wasserstein2"]
    assert sum(svd_calls) == 5  # the collapsed chains
    nan = ~np.isfinite(factor).all(axis=(1, 2))
    assert np.isnan(got[nan]).all() and np.isfinite(got[~nan]).all()
    want, scale = _svd_w2(mean[~nan], factor[~nan], np.zeros(10), L0)
    _assert_w2_as_svd(got[~nan], want, scale, GRAM_W2_REL)
    alone = [
        gaussian_metrics(mean[i : i + 1], factor[i : i + 1], np.zeros(10), L0)["wasserstein2"][0]
        for i in range(len(mean))
    ]
    np.testing.assert_array_equal(got, alone)
