"""Names of the Algonauts 2023 ROI classes and ROIs (DESIGN.md section 4)."""
from __future__ import annotations

HEMIS: tuple[str, str] = ("lh", "rh")

#: ROI class -> ROI names in the order of their integer labels (1, 2, ...).
ROI_CLASSES: dict[str, tuple[str, ...]] = {
    "prf-visualrois": ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
    "streams": ("early", "midventral", "midlateral", "midparietal", "ventral", "lateral", "parietal"),
}

#: The classes whose ROIs get a query each under ``rois_all``.
NON_STREAM_CLASSES: tuple[str, ...] = tuple(c for c in ROI_CLASSES if c != "streams")

#: The label-0 name of every mapping dict.
UNKNOWN = "Unknown"

#: ROI name -> its class.
ROI_TO_CLASS: dict[str, str] = {roi: cls for cls, rois in ROI_CLASSES.items() for roi in rois}

EARLY_VISUAL: tuple[str, ...] = ROI_CLASSES["prf-visualrois"]


def class_mapping(roi_class: str) -> dict[int, str]:
    """The Algonauts mapping dict of one class: ``{0: 'Unknown', 1: ..., ...}``."""
    return {0: UNKNOWN, **{i + 1: name for i, name in enumerate(ROI_CLASSES[roi_class])}}
