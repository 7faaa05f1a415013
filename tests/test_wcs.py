"""The vectorised TAN WCS against astropy."""

import numpy as np

from lsdask.survey.wcs import TanWCS, angular_separation


def test_tan_matches_astropy():
    rng = np.random.default_rng(3)
    for crval2 in (-89.0, -30.0, 0.0, 45.0, 88.5):
        th = rng.uniform(0, 2 * np.pi)
        s = 0.262 / 3600
        w = TanWCS(rng.uniform(0, 360), crval2, 1023.5, 2047.5, -s * np.cos(th), s * np.sin(th),
                   s * np.sin(th), s * np.cos(th), 2046, 4094)
        aw = w.to_astropy()
        x = rng.uniform(-100, 2200, 500)
        y = rng.uniform(-100, 4200, 500)
        ra, dec = w.pixel_to_radec(x, y)
        ara, adec = aw.all_pix2world(x, y, 1)
        assert np.max(angular_separation(ra, dec, ara, adec)) * 3600 < 1e-6
        x2, y2 = w.radec_to_pixel(ra, dec)
        assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-6


def test_far_side_is_nan_and_contains():
    s = 0.262 / 3600
    w = TanWCS(10.0, 0.0, 50.5, 50.5, -s, 0, 0, s, 100, 100)
    x, y = w.radec_to_pixel(190.0, 0.0)
    assert np.isnan(x) and np.isnan(y)
    assert w.contains(10.0, 0.0)
    assert not w.contains(10.1, 0.0)
    ra, dec = w.center()
    assert abs(ra - 10.0) < 1e-12 and abs(dec) < 1e-12
