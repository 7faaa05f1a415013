"""Resampling kernels and the brick <-> CCD pixel map."""

from __future__ import annotations

import numpy as np
import pytest

from lsdask.processors.lite.photometry import fourier_shift
from lsdask.processors.lite.resample import (
    brick_to_ccd_map,
    interpolate,
    lanczos3,
    lanczos3_map,
    lanczos3_weights,
    spline3,
)
from lsdask.survey.bricks import brick_grid
from lsdask.survey.wcs import TanWCS


def _gauss(x, y, x0, y0, s):
    return np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / s ** 2)


def test_lanczos_weights_unit_sum_and_interpolating():
    f = np.linspace(0, 0.999, 50, dtype=np.float32)
    w = lanczos3_weights(f)
    np.testing.assert_allclose(w.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(lanczos3_weights(np.zeros(1, np.float32))[0],
                               [0, 0, 1, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("kernel", ["lanczos3", "spline3"])
def test_kernels_reproduce_shifted_gaussian(kernel):
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    img = _gauss(xx, yy, 31.0, 30.0, 2.0).astype(np.float32)
    # sample the image at positions shifted by (0.3, -0.45): a shifted Gaussian
    x = xx[10:50, 10:50] + 0.3
    y = yy[10:50, 10:50] - 0.45
    out = interpolate(img, x, y, kernel)
    truth = _gauss(x, y, 31.0, 30.0, 2.0)
    assert np.max(np.abs(out - truth)) < 0.01
    assert abs(out.sum() / truth.sum() - 1) < 1e-3


def test_lanczos_matches_spline_and_zero_outside():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:40, 0:40].astype(float)
    img = (_gauss(xx, yy, 20, 20, 3) + 0.001 * rng.standard_normal(xx.shape)).astype(np.float32)
    x = np.array([[10.25, 20.5, -20.0]])
    y = np.array([[11.75, 20.5, 5.0]])
    a, b = lanczos3(img, x, y), spline3(img, x, y)
    np.testing.assert_allclose(a[0, :2], b[0, :2], atol=0.01)
    assert a[0, 2] == 0 and b[0, 2] == 0


def test_fourier_shift_of_psf():
    yy, xx = np.mgrid[0:25, 0:25].astype(float)
    p = _gauss(xx, yy, 12, 12, 1.8)
    p /= p.sum()
    s = fourier_shift(p[None], np.array([0.4]), np.array([-0.3]))[0]
    q = _gauss(xx, yy, 12.4, 11.7, 1.8)
    q /= q.sum()
    assert np.max(np.abs(s - q)) < 1e-5


def test_brick_to_ccd_map_round_trip():
    b = brick_grid().brick("1804p325")
    bw = b.wcs(400)
    # a rotated CCD (x along Dec as DECam) overlapping half the brick grid
    s = 0.262 / 3600
    ccd = TanWCS(b.ra + 0.01, b.dec - 0.005, 250.5, 500.5, 0.0, s, s, 0.0, 500, 1000)

    def sky_to_ccd(ra, dec):
        x, y = ccd.radec_to_pixel(ra, dec)
        return x - 1, y - 1

    pm = brick_to_ccd_map(bw, sky_to_ccd, 500, 1000, ccd.corners())
    assert pm is not None and pm.shape[0] > 10 and pm.shape[1] > 10
    # exact transform at random brick pixels vs the interpolated map
    rng = np.random.default_rng(0)
    j = rng.integers(0, pm.shape[0], 200)
    i = rng.integers(0, pm.shape[1], 200)
    ra, dec = bw.pixel_to_radec(pm.bx0 + i + 1.0, pm.by0 + j + 1.0)
    x, y = sky_to_ccd(ra, dec)
    np.testing.assert_allclose(pm.x[j, i], x, atol=1e-3)
    np.testing.assert_allclose(pm.y[j, i], y, atol=1e-3)
    # a CCD far away does not touch the brick
    far = TanWCS(b.ra + 1, b.dec, 250.5, 500.5, 0.0, s, s, 0.0, 500, 1000)
    assert brick_to_ccd_map(bw, lambda r, d: tuple(v - 1 for v in far.radec_to_pixel(r, d)),
                            500, 1000, far.corners()) is None


@pytest.mark.parametrize("transposed", [False, True])
def test_two_pass_lanczos_matches_direct(transposed):
    """The separable two-pass Lanczos-3 on a brick-box map equals the direct 36-tap one
    (exactly for an axis-aligned map; within 1e-3 of the peak for a 0.3 degree rotation)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:120, 0:120].astype(float)
    img = (_gauss(xx, yy, 40.3, 61.7, 1.8) + 0.01 * rng.standard_normal(xx.shape)
           ).astype(np.float32)
    v, u = np.mgrid[0:100, 0:70].astype(float)
    for rot, tol in ((0.0, 1e-5), (0.005, 1e-3)):
        if transposed:  # image x along the brick rows, as DECam CCDs
            x, y = 5.3 + 0.99 * v + rot * u, 8.6 + 1.01 * u - rot * v
        else:
            x, y = 5.3 + 0.99 * u + rot * v, 8.6 + 1.01 * v - rot * u
        a, b = lanczos3_map(img, x, y), lanczos3(img, x, y)
        assert a.shape == b.shape == x.shape
        assert np.max(np.abs(a - b)) < tol
