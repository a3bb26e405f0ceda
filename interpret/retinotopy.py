"""Which visual-field quadrant each early visual ROI represents, and whether a map's centre lies there.

The left hemisphere sees the right visual field and the right hemisphere
the left; ventral areas (V1v, V2v, V3v, hV4) see the upper field and dorsal
areas (V1d, V2d, V3d) the lower field.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: Upper (+1) or lower (-1) visual field of each early visual ROI: ventral areas see the upper field
VERTICAL_FIELD: dict[str, int] = {"V1v": 1, "V2v": 1, "V3v": 1, "hV4": 1, "V1d": -1, "V2d": -1, "V3d": -1}
#: Right (+1) or left (-1) visual field of each hemisphere
HORIZONTAL_FIELD: dict[str, int] = {"lh": 1, "rh": -1}


def expected_quadrant(hemi: str, roi: str) -> tuple[int, int] | None:
    """(x sign, y sign) of the visual-field quadrant an early visual ROI represents, else None."""
    if roi not in VERTICAL_FIELD:
        return None
    return HORIZONTAL_FIELD[hemi], VERTICAL_FIELD[roi]


def add_expected_quadrant(centres: pd.DataFrame) -> pd.DataFrame:
    """``centres`` (hemi, roi, x_deg, y_deg) with ``in_expected_quadrant``: 1.0 or 0.0 for early visual ROIs, else NaN."""
    centres = centres.copy()
    hits = []
    for row in centres.itertuples():
        q = expected_quadrant(row.hemi, row.roi)
        hits.append(np.nan if q is None else float(np.sign(row.x_deg) == q[0] and np.sign(row.y_deg) == q[1]))
    centres["in_expected_quadrant"] = hits
    return centres
