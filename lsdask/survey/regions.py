"""Named sky regions (RA/Dec boxes); users add their own in the release config."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from .bricks import radec_in_box


@dataclass(frozen=True)
class Region:
    """An RA/Dec box in degrees; ``ramin > ramax`` wraps through RA 0."""

    ramin: float
    ramax: float
    decmin: float
    decmax: float
    name: str | None = None

    def contains(self, ra: ArrayLike, dec: ArrayLike) -> np.ndarray:
        return radec_in_box(ra, dec, self.ramin, self.ramax, self.decmin, self.decmax)

    def named(self, name: str) -> Region:
        return replace(self, name=name)

    @property
    def wraps(self) -> bool:
        return self.ramin > self.ramax


#: Built-in regions. ``demo`` is lsdask's worked example (about 16-20 bricks).
REGIONS: dict[str, Region] = {
    r.name: r for r in (
        Region(180.0, 181.0, 32.0, 33.0, "demo"),
        Region(148.9, 151.2, 1.1, 3.3, "cosmos"),
        Region(310.0, 60.0, -1.25, 1.25, "stripe82"),
        Region(0.0, 360.0, -90.0, 90.0, "allsky"),
    )
}
