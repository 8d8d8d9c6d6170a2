"""Distance backends: values within their rigorous error bound, exclusion markers, validation."""

from __future__ import annotations

import numpy as np
import pytest

from alscale.errors import AlscaleError
from alscale.index import get_backend, min_sq_dist_update, nearest_sq_dist, norm_upper_bound
from alscale.index.exact import sq_dist_rows


def _available() -> list[str]:
    names = ["numpy"]
    try:
        import torch  # noqa: F401

        names.append("torch")
    except ImportError:
        pass
    try:
        import faiss  # noqa: F401

        names.append("faiss")
    except ImportError:
        pass
    return names


BACKENDS = _available()


def _exact_matrix(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.stack([sq_dist_rows(x, ci) for ci in c], axis=1) if c.shape[0] else np.empty((x.shape[0], 0))


def _bound(be, x, c) -> float:
    xn = norm_upper_bound(float((x.astype(np.float64) ** 2).sum(1).max()), x.shape[1])
    cn = norm_upper_bound(float((c.astype(np.float64) ** 2).sum(1).max()), x.shape[1])
    return be.error_bound(xn, cn, x.shape[1])


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "n, m, d, offset", [(1, 1, 1, 0.0), (700, 3, 5, 0.0), (500, 300, 33, 4.0), (64, 17, 128, -2.0)]
)
def test_min_and_nearest_are_within_the_error_bound(name, n, m, d, offset):
    rng = np.random.default_rng(n + m + d)
    x = (rng.standard_normal((n, d)) + offset).astype(np.float32)
    c = (rng.standard_normal((m, d)) + offset).astype(np.float32)
    c[0] = x[0]  # a zero distance (must not come out negative)
    be = get_backend(name)
    exact = _exact_matrix(x, c)
    eps = _bound(be, x, c)
    mind = be.to_numpy(be.min_sq_dist_update(x, c, np.full(n, np.inf, np.float32)))
    assert mind.dtype == np.float32 and mind.shape == (n,)
    assert np.all(np.abs(mind - exact.min(1)) <= eps) and np.all(mind >= 0)
    d2, idx = be.nearest_sq_dist(x, c)
    assert d2.dtype == np.float32 and idx.dtype == np.int64
    assert np.all(np.abs(d2 - exact.min(1)) <= eps) and np.all(d2 >= 0)
    assert np.all(exact[np.arange(n), idx] <= exact.min(1) + 2 * eps)  # idx attains the minimum


@pytest.mark.parametrize("name", BACKENDS)
def test_update_keeps_smaller_values_and_minus_inf_in_place(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    c = rng.standard_normal((4, 8)).astype(np.float32)
    be = get_backend(name)
    mind = be.asarray(np.full(300, np.inf, np.float32))
    mind_np = be.to_numpy(mind)
    mind_np[:10] = -np.inf
    mind_np[10:20] = 0.5
    out = be.min_sq_dist_update(be.asarray(x), c, mind)
    assert out is mind  # native arrays are updated in place
    got = be.to_numpy(out)
    assert np.all(got[:10] == -np.inf)
    assert np.all(got[10:20] <= 0.5)
    # Further centers only lower the values.
    before = got.copy()
    got2 = be.to_numpy(be.min_sq_dist_update(x, rng.standard_normal((3, 8)).astype(np.float32), got.copy()))
    assert np.all(got2 <= before)


@pytest.mark.parametrize("name", BACKENDS)
def test_empty_inputs(name):
    be = get_backend(name)
    x = np.zeros((0, 4), np.float32)
    assert be.to_numpy(be.min_sq_dist_update(x, np.ones((2, 4), np.float32), np.zeros(0, np.float32))).shape == (0,)
    mind = np.full(3, 7.0, np.float32)
    out = be.to_numpy(be.min_sq_dist_update(np.ones((3, 4), np.float32), np.zeros((0, 4), np.float32), mind))
    assert out.tolist() == [7.0, 7.0, 7.0]


def test_get_backend_resolves_and_validates():
    assert get_backend("numpy").name == "numpy"
    assert get_backend("auto").name in ("torch", "numpy")
    assert get_backend("AUTO") is get_backend("auto") or get_backend("AUTO").name == get_backend("auto").name
    with pytest.raises(AlscaleError, match="unknown distance backend 'annoy'; valid: auto, numpy, torch, faiss"):
        get_backend("annoy")
    with pytest.raises(AlscaleError, match="numpy backend runs on the CPU only"):
        get_backend("numpy", "cuda")
    with pytest.raises(AlscaleError, match="device must be cpu, cuda or cuda:N"):
        get_backend("torch", "tpu")


def test_public_wrappers_validate_and_agree_with_exact():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 6))
    ref = rng.standard_normal((9, 6))
    d2, idx = nearest_sq_dist(x, ref, backend="numpy")
    exact = _exact_matrix(x.astype(np.float32), ref.astype(np.float32))
    np.testing.assert_allclose(d2, exact.min(1), rtol=1e-5, atol=1e-5)
    mind = min_sq_dist_update(x, ref, backend="numpy")
    np.testing.assert_allclose(mind, exact.min(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(AlscaleError, match="centers has D = 5 but x has D = 6"):
        min_sq_dist_update(x, ref[:, :5])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(AlscaleError, match=r"x has a non-finite value \(nan\) at index \(3, 2\)"):
        nearest_sq_dist(bad, ref)
    with pytest.raises(AlscaleError, match="ref is empty"):
        nearest_sq_dist(x, ref[:0])
    with pytest.raises(AlscaleError, match=r"mind must have shape \(50,\)"):
        min_sq_dist_update(x, ref, np.zeros(3))
