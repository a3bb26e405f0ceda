"""Brain-region queries: which ROIs get a query and which vertices each query reads out to.

:data:`READOUT_RES` lists the seed's ``readout_res`` choices as a table: which
ROI classes get one query per ROI, per hemisphere, and whether a query
covers the vertices left unassigned. A vertex in several ROIs (of different
classes) belongs to several queries and gets the sum of their readouts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OptionError
from ..rois import HEMIS, NON_STREAM_CLASSES
from ..subject import Subject

UNASSIGNED = "unknown"


@dataclass(frozen=True)
class ReadoutRes:
    """One ``readout_res`` choice: ROI classes with a query per ROI, and an unassigned query."""

    classes: tuple[str, ...]
    unassigned: bool = True
    description: str = ""
    per_vertex: bool = False  # one query per vertex (``voxels``) instead of per ROI


READOUT_RES: dict[str, ReadoutRes] = {
    "rois_all": ReadoutRes(NON_STREAM_CLASSES, True, "a query per ROI of the five non-stream classes, plus unassigned"),
    "streams_inc": ReadoutRes(("streams",), True, "a query per stream ROI, plus unassigned"),
    "visuals": ReadoutRes(("prf-visualrois",), True, "a query per early visual ROI, plus the rest"),
    "bodies": ReadoutRes(("floc-bodies",), True, "a query per body ROI, plus the rest"),
    "faces": ReadoutRes(("floc-faces",), True, "a query per face ROI, plus the rest"),
    "places": ReadoutRes(("floc-places",), True, "a query per place ROI, plus the rest"),
    "words": ReadoutRes(("floc-words",), True, "a query per word ROI, plus the rest"),
    "hemis": ReadoutRes((), True, "one query per hemisphere"),
    "voxels": ReadoutRes((), False, "one query per vertex (use `decoder.readout` linear; queries are decoded in chunks)",
                         per_vertex=True),
}


@dataclass
class QuerySet:
    """Queries (hemi x ROI) and which vertices each one reads out to.

    Vertices are numbered over both hemispheres, lh first then rh.
    ``memberships`` is a (vertices x queries) boolean matrix.
    """

    hemis: list[str]
    rois: list[str]
    n_vertices: dict[str, int]
    memberships: np.ndarray

    @property
    def names(self) -> list[str]:
        return [f"{h}:{r}" for h, r in zip(self.hemis, self.rois)]

    @property
    def n_queries(self) -> int:
        return len(self.rois)

    @property
    def n_total(self) -> int:
        return sum(self.n_vertices.values())

    def vertex_slice(self, hemi: str) -> slice:
        start = 0 if hemi == "lh" else self.n_vertices["lh"]
        return slice(start, start + self.n_vertices[hemi])

    def query_index(self, hemi: str, roi: str) -> int:
        try:
            return self.names.index(f"{hemi}:{roi}")
        except ValueError:
            raise OptionError("rois", f"no query for {roi!r} in {hemi}; queries: {', '.join(self.names)}") from None

    def groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(query indices, vertex indices) per distinct set of queries; every vertex in exactly one."""
        keys, inverse = np.unique(self.memberships, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        return [(np.flatnonzero(key), np.flatnonzero(inverse == g)) for g, key in enumerate(keys) if key.any()]


def build_queries(subject: Subject, readout_res: str) -> QuerySet:
    """The queries of ``readout_res`` for the ROIs present in each hemisphere of ``subject``."""
    if readout_res not in READOUT_RES:
        raise OptionError("readout_res", f"unknown readout {readout_res!r}; choose from {', '.join(READOUT_RES)}")
    spec = READOUT_RES[readout_res]
    n = {h: subject.n_vertices(h) for h in HEMIS}
    if spec.per_vertex:
        return vertex_queries(n)
    hemis, rois, columns = [], [], []
    offset = {"lh": 0, "rh": n["lh"]}
    total = n["lh"] + n["rh"]
    for hemi in HEMIS:
        assigned = np.zeros(n[hemi], bool)
        for roi_class in spec.classes:
            for roi in subject.roi_names(roi_class, hemi):
                mask = subject.roi_mask(roi, hemi)
                assigned |= mask
                hemis.append(hemi), rois.append(roi), columns.append(_embed(mask, offset[hemi], total))
        if spec.unassigned and (~assigned).any():
            hemis.append(hemi), rois.append(UNASSIGNED), columns.append(_embed(~assigned, offset[hemi], total))
    memberships = np.stack(columns, axis=1)
    return QuerySet(hemis, rois, n, memberships)


def vertex_queries(n_vertices: dict[str, int]) -> QuerySet:
    """One query per vertex, named ``v<index within its hemisphere>`` (``readout_res voxels``).

    Its memberships are the identity: every vertex is read out from its own
    query token alone (the original's ``diagonal`` of a vertices x vertices product).
    """
    hemis = [h for h in HEMIS for _ in range(n_vertices[h])]
    rois = [f"v{i}" for h in HEMIS for i in range(n_vertices[h])]
    return QuerySet(hemis, rois, dict(n_vertices), np.eye(len(rois), dtype=bool))


def _embed(mask: np.ndarray, offset: int, total: int) -> np.ndarray:
    out = np.zeros(total, bool)
    out[offset:offset + mask.size] = mask
    return out
