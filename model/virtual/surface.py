"""ROI patches of the virtual subject on fsaverage5 (bundled with nilearn).

Early visual cortex is a set of angular sectors around the occipital pole
(V1 along the calcarine, then V2 and V3 on either side, hV4 ventral beyond
V3v), with eccentricity growing with distance from the pole and polar angle
alternating across sector borders, as in real retinotopic maps. Category
ROIs are patches around plausible anatomical locations (fsaverage/MNI305
millimetres of the left hemisphere, mirrored for the right). Distances are
measured on the fsaverage sphere (radius 100).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..rois import HEMIS, ROI_CLASSES, class_mapping

_NILEARN_HEMI = {"lh": "left", "rh": "right"}


@dataclass(frozen=True)
class Mesh:
    """One fsaverage5 hemisphere: white-surface millimetres and unit-sphere positions."""

    white: np.ndarray  # (n, 3) mm
    sphere: np.ndarray  # (n, 3) unit vectors
    faces: np.ndarray  # (m, 3)


@lru_cache(maxsize=2)
def fsaverage5(hemi: str) -> Mesh:
    """Load one hemisphere of fsaverage5 from nilearn's bundled copy (no download)."""
    from nilearn import datasets, surface

    fs = datasets.fetch_surf_fsaverage("fsaverage5")
    white = surface.load_surf_mesh(fs[f"white_{_NILEARN_HEMI[hemi]}"])
    sphere = surface.load_surf_mesh(fs[f"sphere_{_NILEARN_HEMI[hemi]}"]).coordinates
    sphere = sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    return Mesh(np.asarray(white.coordinates, float), np.asarray(sphere, float), np.asarray(white.faces))


SPHERE_RADIUS = 100.0

#: surface densities a virtual subject can be written at
SURFACES = ("fsaverage5", "fsaverage6")


def subdivide(mesh: Mesh) -> Mesh:
    """One icosahedral subdivision: a new vertex at every edge midpoint (fsaverage5 -> fsaverage6 density).

    The first vertices are the original ones; the new vertices' order is ours,
    not FreeSurfer's, so such a surface is for benchmarks at real data size.
    """
    faces = mesh.faces
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    n = mesh.white.shape[0]
    mid = n + inverse.reshape(3, -1).T  # (faces, 3): midpoints of edges ab, bc, ca
    white = np.concatenate([mesh.white, mesh.white[unique].mean(1)])
    sphere = np.concatenate([mesh.sphere, mesh.sphere[unique].mean(1)])
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    a, b, c = faces.T
    ab, bc, ca = mid.T
    new_faces = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    return Mesh(white, sphere, new_faces)


@lru_cache(maxsize=4)
def surface_mesh(hemi: str, surface: str = "fsaverage5") -> Mesh:
    """The mesh a virtual subject is laid out on."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}; choose from {SURFACES}")
    mesh = fsaverage5(hemi)
    return subdivide(mesh) if surface == "fsaverage6" else mesh


# --------------------------------------------------------------------------
# The layout tables
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Patch:
    """A category ROI: where it sits, how big, what it prefers, in which hemispheres.

    ``preference`` is a category name of :mod:`~model.virtual.stimuli` or
    ``None`` for a null ROI (its vertices are pure noise). ``radius`` is in
    sphere units (about millimetres); ``rh_scale`` scales it in the right
    hemisphere (0 = absent there).
    """

    roi: str
    centre_mm: tuple[float, float, float]
    radius: float
    preference: str | None
    rh_scale: float = 1.0


CATEGORY_PATCHES: tuple[Patch, ...] = (
    Patch("OFA", (-42, -80, -8), 13, "face"),
    Patch("FFA-1", (-36, -60, -20), 13, "face"),
    Patch("FFA-2", (-38, -44, -22), 12, "face"),
    Patch("mTL-faces", (-28, -28, -24), 9, None),
    Patch("aTL-faces", (-34, -6, -35), 9, None),
    Patch("EBA", (-48, -70, 6), 16, "body"),
    Patch("FBA-1", (-42, -52, -10), 11, "body"),
    Patch("FBA-2", (-44, -40, -14), 10, "body"),
    Patch("mTL-bodies", (-30, -36, -16), 8, None),
    Patch("OPA", (-32, -84, 24), 14, "place"),
    Patch("PPA", (-26, -44, -8), 13, "place"),
    Patch("RSC", (-12, -56, 14), 12, "place"),
    Patch("OWFA", (-46, -76, -16), 10, "word", rh_scale=0.6),
    Patch("VWFA-1", (-48, -58, -14), 12, "word", rh_scale=0.6),
    Patch("VWFA-2", (-46, -46, -16), 10, "word", rh_scale=0.0),
    Patch("mfs-words", (-40, -36, -20), 9, "word", rh_scale=0.0),
    Patch("mTL-words", (-34, -24, -22), 8, None, rh_scale=0.0),
)


@dataclass(frozen=True)
class Sector:
    """An early visual area: an angular sector around the occipital pole.

    Angles are measured around the pole from the calcarine direction
    (0 deg), positive towards dorsal. ``rising`` says whether the polar angle
    in the visual field goes from the horizontal to the vertical meridian
    (True) or back (False) across the sector.
    """

    roi: str
    start_deg: float
    stop_deg: float
    rising: bool
    sigma_deg: tuple[float, float]  # pRF size = a + b * eccentricity


EARLY_VISUAL_SECTORS: tuple[Sector, ...] = (
    Sector("V1d", 0, 32, True, (0.15, 0.08)),
    Sector("V2d", 32, 62, False, (0.2, 0.12)),
    Sector("V3d", 62, 90, True, (0.3, 0.18)),
    Sector("V1v", 0, -32, True, (0.15, 0.08)),
    Sector("V2v", -32, -62, False, (0.2, 0.12)),
    Sector("V3v", -62, -90, True, (0.3, 0.18)),
    Sector("hV4", -90, -125, False, (0.45, 0.25)),
)

OCCIPITAL_POLE_MM = (-8, -100, 2)
CALCARINE_MM = (-6, -80, 4)
DORSAL_POLE_MM = (-10, -94, 24)
EARLY_VISUAL_RADIUS = 65.0  # sphere units from the pole
ECCENTRICITY_RANGE_DEG = (0.15, 5.0)
CHALLENGE_RADIUS = 88.0  # sphere units from the pole; plus every ROI patch

STREAM_SEEDS_MM: dict[str, tuple[float, float, float]] = {
    "midventral": (-32, -80, -16),
    "midlateral": (-44, -82, 2),
    "midparietal": (-24, -86, 28),
    "ventral": (-34, -52, -18),
    "lateral": (-50, -64, 4),
    "parietal": (-24, -66, 46),
}


# --------------------------------------------------------------------------
# Building the layout of one hemisphere
# --------------------------------------------------------------------------

@dataclass
class HemiLayout:
    """Labels and early-visual retinotopy of one hemisphere on fsaverage5.

    ``labels`` maps each ROI class to an int label per fsaverage5 vertex
    (the numbering of :func:`~model.rois.class_mapping`); ``challenge`` marks
    the vertices that make up the subject's data; ``eccentricity``,
    ``polar_angle`` (radians from the horizontal meridian, within the
    quadrant) and ``sector`` are set for early-visual vertices (NaN / ''
    elsewhere).
    """

    hemi: str
    labels: dict[str, np.ndarray]
    challenge: np.ndarray
    eccentricity: np.ndarray
    polar_angle: np.ndarray
    sector: np.ndarray
    patch_of: dict[str, np.ndarray]


def _mirror(xyz: tuple[float, float, float], hemi: str) -> np.ndarray:
    x, y, z = xyz
    return np.array([x if hemi == "lh" else -x, y, z], float)


def _nearest_vertex(mesh: Mesh, xyz_mm: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(mesh.white - xyz_mm, axis=1)))


def _sphere_distance(mesh: Mesh, vertex: int) -> np.ndarray:
    cos = np.clip(mesh.sphere @ mesh.sphere[vertex], -1, 1)
    return SPHERE_RADIUS * np.arccos(cos)


def _tangent(mesh: Mesh, at: int, towards: int) -> np.ndarray:
    p = mesh.sphere[at]
    t = mesh.sphere[towards] - (mesh.sphere[towards] @ p) * p
    return t / np.linalg.norm(t)


def build_hemi_layout(hemi: str, surface: str = "fsaverage5", n_challenge: int | None = None) -> HemiLayout:
    """The virtual subject's ROI layout for one hemisphere (deterministic).

    ``n_challenge`` sets the exact number of challenge vertices: the ROI
    vertices plus the vertices nearest the occipital pole (for benchmarks at
    the real data's size); by default, every vertex within
    :data:`CHALLENGE_RADIUS` of the pole.
    """
    mesh = surface_mesh(hemi, surface)
    n = mesh.white.shape[0]
    labels = {cls: np.zeros(n, np.int32) for cls in ROI_CLASSES}
    label_of = {cls: {name: lab for lab, name in class_mapping(cls).items()} for cls in ROI_CLASSES}

    # early visual sectors around the pole
    pole = _nearest_vertex(mesh, _mirror(OCCIPITAL_POLE_MM, hemi))
    e1 = _tangent(mesh, pole, _nearest_vertex(mesh, _mirror(CALCARINE_MM, hemi)))
    up = _tangent(mesh, pole, _nearest_vertex(mesh, _mirror(DORSAL_POLE_MM, hemi)))
    e2 = up - (up @ e1) * e1
    e2 /= np.linalg.norm(e2)
    dist_pole = _sphere_distance(mesh, pole)
    p = mesh.sphere[pole]
    t = mesh.sphere - (mesh.sphere @ p)[:, None] * p
    angle = np.degrees(np.arctan2(t @ e2, t @ e1))
    lo, hi = ECCENTRICITY_RANGE_DEG
    eccentricity = np.full(n, np.nan)
    polar = np.full(n, np.nan)
    sector_name = np.full(n, "", dtype=object)
    in_ev = dist_pole < EARLY_VISUAL_RADIUS
    for sector in EARLY_VISUAL_SECTORS:
        a0, a1 = sorted((sector.start_deg, sector.stop_deg))
        members = in_ev & (angle >= a0) & (angle < a1)
        frac = np.abs(angle[members] - sector.start_deg) / abs(sector.stop_deg - sector.start_deg)
        frac = frac if sector.rising else 1 - frac
        polar[members] = frac * np.pi / 2
        eccentricity[members] = lo * (hi / lo) ** (dist_pole[members] / EARLY_VISUAL_RADIUS)
        sector_name[members] = sector.roi
        labels["prf-visualrois"][members] = label_of["prf-visualrois"][sector.roi]

    # category patches
    # planted patches first; null ROIs then avoid them, so their vertices are pure noise
    patch_of: dict[str, np.ndarray] = {}
    planted = np.zeros(n, bool)
    for patch in sorted(CATEGORY_PATCHES, key=lambda p: p.preference is None):
        radius = patch.radius * (1.0 if hemi == "lh" else patch.rh_scale)
        if radius <= 0:
            continue
        centre = _nearest_vertex(mesh, _mirror(patch.centre_mm, hemi))
        members = _sphere_distance(mesh, centre) < radius
        cls = next(c for c, names in ROI_CLASSES.items() if patch.roi in names)
        members &= labels[cls] == 0  # labels are exclusive within a class
        if patch.preference is None:
            members &= ~planted & (labels["prf-visualrois"] == 0)
        else:
            planted |= members
        labels[cls][members] = label_of[cls][patch.roi]
        patch_of[patch.roi] = members

    assigned = np.any([labels[c] > 0 for c in ROI_CLASSES if c != "streams"], axis=0)
    if n_challenge is None:
        challenge = (dist_pole < CHALLENGE_RADIUS) | assigned
    else:
        if not assigned.sum() <= n_challenge <= n:
            raise ValueError(f"{hemi}: n_challenge must be between {int(assigned.sum())} and {n}, got {n_challenge}")
        challenge = assigned.copy()
        rest = np.flatnonzero(~assigned)
        challenge[rest[np.argsort(dist_pole[rest], kind="stable")[:n_challenge - assigned.sum()]]] = True

    # streams: early visual cortex is 'early', the rest goes to the nearest stream seed
    streams = labels["streams"]
    early = np.isin(sector_name, ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d"])
    seeds = [name for name in STREAM_SEEDS_MM]
    seed_dist = np.stack([_sphere_distance(mesh, _nearest_vertex(mesh, _mirror(STREAM_SEEDS_MM[s], hemi))) for s in seeds])
    nearest = np.asarray(seeds, dtype=object)[np.argmin(seed_dist, axis=0)]
    reach = seed_dist.min(axis=0) < 45
    for name in seeds:
        streams[challenge & ~early & reach & (nearest == name)] = label_of["streams"][name]
    streams[challenge & early] = label_of["streams"]["early"]

    return HemiLayout(hemi, labels, challenge, eccentricity, polar, sector_name, patch_of)


def build_layout(surface: str = "fsaverage5", n_challenge: dict[str, int] | None = None) -> dict[str, HemiLayout]:
    """Both hemispheres."""
    return {hemi: build_hemi_layout(hemi, surface, (n_challenge or {}).get(hemi)) for hemi in HEMIS}
