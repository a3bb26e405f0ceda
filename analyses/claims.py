"""A scientist's hypotheses as short sentences, tested with the suite's calibrated statistics.

Grammar (one claim per sentence; words are case-insensitive, ROI names as
Algonauts spells them, any case)::

    [lh|rh] ROI prefers CATEGORY [over CATEGORY]
    [lh|rh] ROI attends CATEGORY
    [lh|rh] ROI attends DIRECTION
    [lh|rh] ROI routes by content|location

CATEGORY is one of the stimuli's categories (``face``, ``body``, ``place``,
``word``, ``object``, or those ``--categories`` names; plurals and fLoc
names such as ``faces`` or ``characters`` are forgiven), DIRECTION one of :data:`DIRECTIONS`
(``upper``, ``lower``, ``left``, ``right`` and the four corners such as
``upper-right``). Without a hemisphere the claim is tested in each
hemisphere that has the ROI (one row each).

How each kind is tested (the ``statistic`` column names it):

``prefers C``
    The run's predicted ROI-mean response to the images of ``C`` against all
    other images: Welch's t, effect d-prime, permutation p (labels
    shuffled), as ``tbe selectivity`` (:mod:`analyses.stats`).
``prefers C over D``
    The same, restricted to the images of ``C`` and ``D`` (an image that
    shows both is in neither group).
``attends C``
    Over the images showing ``C``: the share of the ROI query's attention
    on ``C``'s mask minus the share of the image the mask covers (chance,
    as in :mod:`analyses.attention_selectivity`); effect: its mean with a
    bootstrap interval; p: one-sample t-test over images of the excess
    against the settings' minimum excess (``min_attention_excess``, 0.05:
    five points of the attention's mass beyond a uniform map's), so a
    significant but negligible excess does not support the claim.
``attends DIRECTION``
    The per-image excess of attention in that part of the visual field over
    the part's share of the image; effect: its mean with a bootstrap
    interval; p: as for ``attends C``, against the same minimum.
``routes by location|content``
    :mod:`interpret.routing`'s combined location test (circular shifts, and
    the index above the routing settings' minimum) or content test (mask
    shuffles with the contrast-energy control, and the index above its
    minimum) of the query; effect: the index with its bootstrap interval.

p is one-sided in the claim's direction; ``p_fdr`` is BH over every claim x
hemisphere row of one analysis. Verdicts at ``alpha``: ``supported`` (the
claim's p_fdr < alpha and, for predicted responses, the run predicts that
ROI reliably on held-out fMRI), ``contradicted`` (the opposite direction is
significant, with the same reliability condition: the other category
preferred, attention below chance by at least the minimum excess), else ``not supported``. Routing claims have no opposite that a test could
establish, so they are never ``contradicted``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from model.errors import InputError
from model.files import write_csv
from model.options import check_settings, setting
from model.rois import HEMIS, ROI_TO_CLASS
from model.runs import Run, open_run
from model.vision import CATEGORIES

from . import stats as S
from .stimuli import StimulusOptions, choose_stimuli, normalise_category

log = logging.getLogger(__name__)

#: Parts of the visual field a claim may name: (x sign, y sign), 0 for either.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "upper": (0, 1), "lower": (0, -1), "left": (-1, 0), "right": (1, 0),
    "upper-left": (-1, 1), "upper-right": (1, 1), "lower-left": (-1, -1), "lower-right": (1, -1),
}
#: What ``routes by`` may be followed by.
ROUTES = ("location", "content")
#: The verbs, and the grammar of what follows each, for the error lines.
GRAMMAR = {
    "prefers": "prefers CATEGORY [over CATEGORY]",
    "attends": "attends CATEGORY or attends DIRECTION",
    "routes": "routes by location|content",
}


@dataclass(frozen=True)
class Claim:
    """One parsed claim: ``kind`` is ``prefers``, ``attends_category``, ``attends_direction`` or ``routes``."""

    text: str
    hemis: tuple[str, ...]
    roi: str
    kind: str
    target: str
    other: str | None = None  # ``prefers C over D``: D


def _category(word: str, categories: Sequence[str], where: str) -> str:
    found = normalise_category(word, categories)
    if found is None:
        raise InputError(where, f"unknown category {word!r}; choose from {', '.join(categories)}")
    return found


def parse_claim(text: str, categories: Sequence[str] = CATEGORIES, where: str | None = None) -> Claim:
    """One sentence of the grammar (see the module) as a :class:`Claim`; one clear error line if it does not parse."""
    where = where or f"claim {text.strip()!r}"
    words = text.strip().rstrip(".").split()
    hemis = tuple(HEMIS)
    if words and words[0].lower() in HEMIS:
        hemis, words = (words[0].lower(),), words[1:]
    if len(words) < 3:
        raise InputError(where, "does not parse: expected '[lh|rh] ROI " + "' or '[lh|rh] ROI ".join(GRAMMAR.values()) + "'")
    rois = {r.lower(): r for r in ROI_TO_CLASS}
    roi = rois.get(words[0].lower())
    if roi is None:
        raise InputError(where, f"unknown ROI {words[0]!r}; ROIs are the Algonauts names, e.g. V1v, FFA-1, EBA, PPA, VWFA-1")
    verb, rest = words[1].lower(), [w.lower() for w in words[2:]]
    if verb not in GRAMMAR:
        raise InputError(where, f"unknown verb {words[1]!r}; claims say {', '.join(GRAMMAR)}")
    if verb == "prefers":
        if len(rest) == 1:
            return Claim(text, hemis, roi, "prefers", _category(rest[0], categories, where))
        if len(rest) == 3 and rest[1] == "over":
            first, second = _category(rest[0], categories, where), _category(rest[2], categories, where)
            if first == second:
                raise InputError(where, f"compares {first} with itself")
            return Claim(text, hemis, roi, "prefers", first, second)
    elif verb == "attends" and len(rest) == 1:
        if rest[0] in DIRECTIONS:
            return Claim(text, hemis, roi, "attends_direction", rest[0])
        if normalise_category(rest[0], categories) is not None:
            return Claim(text, hemis, roi, "attends_category", _category(rest[0], categories, where))
        raise InputError(where, f"unknown category or direction {rest[0]!r}; categories: {', '.join(categories)}; "
                                f"directions: {', '.join(DIRECTIONS)}")
    elif verb == "routes" and len(rest) == 2 and rest[0] == "by":
        if rest[1] not in ROUTES:
            raise InputError(where, f"routes by {rest[1]!r}? say 'routes by location' or 'routes by content'")
        return Claim(text, hemis, roi, "routes", rest[1])
    raise InputError(where, f"does not parse: expected '[lh|rh] {roi} {GRAMMAR[verb]}'")


def parse_claims(claims: Sequence[str], categories: Sequence[str] = CATEGORIES) -> list[Claim]:
    """Every sentence parsed (empty ones and ``#`` comments skipped); the first that fails stops with its error."""
    return [parse_claim(c, categories) for c in claims if c.strip() and not c.strip().startswith("#")]


def read_claims(path: str | Path, categories: Sequence[str] = CATEGORIES) -> list[Claim]:
    """Claims from a text file, one per line (blank lines and ``#`` comments skipped); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing: expected a text file with one claim per line")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip() and not line.strip().startswith("#"):
            out.append(parse_claim(line, categories, f"{path}, line {n}: claim {line.strip()!r}"))
    if not out:
        raise InputError(path, "holds no claims (one sentence per line, e.g. 'FFA-1 prefers face')")
    return out




# --------------------------------------------------------------------------
# The tests, one per kind, on arrays
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimSettings:
    """How claims are tested; each field is also a ``tbe claims`` option."""

    n_permutations: int = setting(10_000, "permutations (or shifts) per test", minimum=1)
    n_bootstrap: int = setting(2000, "bootstrap resamples of the effect intervals", minimum=1)
    alpha: float = setting(0.05, "FDR level of the verdicts", minimum=0, maximum=1)
    confidence: float = setting(0.95, "level of the effect intervals", minimum=0, maximum=1)
    min_attention_excess: float = setting(0.05, "smallest mean excess of attention share over area share (0-1) that "
                                                "supports an 'attends' claim", minimum=0, maximum=1)

    def check(self) -> None:
        """One clear error naming the option of the first setting out of range."""
        check_settings(self)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def preference_test(x: np.ndarray, first: np.ndarray, second: np.ndarray, settings: ClaimSettings,
                    rng: np.random.Generator) -> dict:
    """Does ``x`` (per image) exceed in the ``first`` images what it is in the ``second``?

    Welch's t (``statistic``), d-prime (``effect``) with a percentile
    bootstrap interval (images resampled within each group), and the
    permutation p of t in the claim's direction (``p``) and against it
    (``p_opposite``), both from the same shuffles of the group labels.
    """
    a, b = np.asarray(x[first], float), np.asarray(x[second], float)
    if len(a) < 2 or len(b) < 2:
        raise InputError("claims", f"needs at least two images in each group, got {len(a)} and {len(b)}")
    both = np.concatenate([a, b])[:, None]
    codes = np.r_[np.zeros(len(a), int), np.ones(len(b), int)]
    moments = S.category_moments(both, codes, 2)
    t = S.welch_t(moments)[0][0, 0]
    null = S.permutation_statistics(both, codes, 2, S.random_permutations(len(both), settings.n_permutations, rng))[:, 0, 0]
    ia = rng.integers(0, len(a), (settings.n_bootstrap, len(a)))
    ib = rng.integers(0, len(b), (settings.n_bootstrap, len(b)))
    ra, rb = a[ia], b[ib]
    boot = (ra.mean(1) - rb.mean(1)) / np.sqrt(np.clip((ra.var(1, ddof=1) + rb.var(1, ddof=1)) / 2, 1e-300, None))
    low, high = _interval(boot, settings.confidence)
    return {"statistic": "welch_t", "value": float(t), "effect": float(S.d_prime(moments)[0, 0]), "ci_low": low,
            "ci_high": high, "p": float(S.permutation_p(np.array([t]), null[:, None], "greater")[0]),
            "p_opposite": float(S.permutation_p(np.array([t]), null[:, None], "less")[0])}


def mean_excess_test(excess: np.ndarray, statistic: str, settings: ClaimSettings, rng: np.random.Generator,
                     effect: np.ndarray | None = None, minimum: float = 0.0) -> dict:
    """Is the per-image ``excess`` above ``minimum`` on average (or below ``-minimum``)?

    One-sample t-tests against ``minimum`` (``p``) and against ``-minimum``
    the other way (``p_opposite``); effect: mean of ``effect`` (default the
    excess) with a bootstrap interval.
    """
    excess = np.asarray(excess, float)
    effect = excess if effect is None else np.asarray(effect, float)
    if len(excess) < 2:
        raise InputError("claims", f"needs at least two images, got {len(excess)}")
    boot = effect[rng.integers(0, len(effect), (settings.n_bootstrap, len(effect)))].mean(1)
    low, high = _interval(boot, settings.confidence)
    greater = stats.ttest_1samp(excess, minimum, alternative="greater")
    less = stats.ttest_1samp(excess, -minimum, alternative="less")
    return {"statistic": statistic, "value": float(greater.statistic), "effect": float(effect.mean()), "ci_low": low,
            "ci_high": high, "p": float(greater.pvalue), "p_opposite": float(less.pvalue)}


def direction_weights(direction: str, positions: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``(token,)`` weight of each token in a part of the visual field (its image pixels only)."""
    sx, sy = DIRECTIONS[direction]
    inside = np.ones(len(positions), bool)
    if sx:
        inside &= np.sign(positions[:, 0]) == sx
    if sy:
        inside &= np.sign(positions[:, 1]) == sy
    return inside * image


def verdicts(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """``p_fdr`` and the opposite's, BH over all rows; ``verdict`` as the module says."""
    table = table.copy()
    table["p_fdr"] = S.fdr_bh(table["p"].to_numpy(float))
    opposite = table["p_opposite"].to_numpy(float)
    table["p_opposite_fdr"] = np.nan
    if np.isfinite(opposite).any():
        ok = np.isfinite(opposite)
        table.loc[ok, "p_opposite_fdr"] = S.fdr_bh(opposite[ok])
    reliable = table["reliable"].astype("boolean").fillna(True).astype(bool)
    supported = (table["p_fdr"] < alpha) & reliable
    contradicted = (table["p_opposite_fdr"].fillna(1.0) < alpha) & reliable
    table["verdict"] = np.where(supported, "supported", np.where(contradicted, "contradicted", "not supported"))
    return table


# --------------------------------------------------------------------------
# Claims on a run
# --------------------------------------------------------------------------

#: The claims table's columns, in order.
COLUMNS = ["claim", "hemi", "roi", "kind", "statistic", "value", "effect", "ci_low", "ci_high", "p", "p_fdr",
           "p_opposite", "p_opposite_fdr", "n_images", "reliable", "r_heldout", "verdict"]


def claim_vocabulary(stimuli: StimulusOptions | None = None) -> tuple[str, ...]:
    """The categories a claim may name: the stimulus options' ``categories``, else :data:`model.vision.CATEGORIES`."""
    return (stimuli.vocabulary() if stimuli is not None else None) or CATEGORIES


@dataclass
class Evidence:
    """What one analysis computes once for all its claims (each part only when a claim needs it)."""

    membership: np.ndarray  # (image, category) bool
    responses: object = None  # xarray (image, hemi, roi) of predicted ROI means
    reliability: pd.DataFrame | None = None
    attention: np.ndarray | None = None  # (image, query, token)
    queries: list | None = None
    coverage: np.ndarray | None = None  # (image, category, token)
    image: np.ndarray | None = None  # (token,)
    categories: tuple[str, ...] = ()
    name: str = ""  # the stimuli, for error lines
    positions: np.ndarray | None = None
    routing: pd.DataFrame | None = None


def gather_evidence(run: Run, claims: list[Claim], stimuli, settings: ClaimSettings, seed: int,
                    cache_dir: str | Path | None) -> Evidence:
    """Predictions, reliability, attention and routing: what ``claims`` need, computed once."""
    from interpret.routing import RoutingSettings, routing_table, token_positions_deg

    from .attention_selectivity import token_attention, token_contrast, token_coverage
    from .responses import features_for, heldout_responses, predicted_roi_means, reliability

    kinds = {c.kind for c in claims}
    features = features_for(run, stimuli.paths, stimuli.fmri_rows, cache_dir)
    ev = Evidence(np.asarray(stimuli.membership, bool), categories=tuple(stimuli.categories), name=stimuli.name)
    if "prefers" in kinds:
        ev.responses = predicted_roi_means(run, features)
        _, held_pred, held_meas = heldout_responses(run, cache_dir)
        if held_pred is not None:
            ev.reliability = reliability(held_pred, held_meas, settings.alpha).set_index(["hemi", "roi"])
    if kinds & {"attends_category", "attends_direction", "routes"}:
        if not run.model.capabilities.decoder_attention:
            raise InputError("claims", f"attention and routing claims need the transformer; this run is "
                                       f"{run.config.encoder_arch!r}")
        backbone = run.shared_backbone
        ev.attention, ev.queries = token_attention(run, features)
        ev.positions = token_positions_deg(tuple(backbone.grid), backbone.patch, backbone.image_side)
        if stimuli.masks is not None:
            ev.coverage, ev.image = token_coverage(stimuli.masks, backbone)
        else:
            ev.image = token_coverage(np.zeros((1, 1, 4, 4), np.float32), backbone)[1]
        if "routes" in kinds:
            routing_settings = RoutingSettings(settings.n_permutations, settings.n_bootstrap, settings.alpha,
                                               settings.confidence)
            control = (token_contrast(stimuli.paths, stimuli.masks.shape[-1], backbone)
                       if stimuli.masks is not None else None)
            ev.routing = routing_table(ev.attention, tuple(backbone.grid), ev.positions, ev.coverage, ev.categories,
                                       routing_settings, np.random.default_rng([seed, 7]), control)
    return ev


def _query(ev: Evidence, hemi: str, roi: str) -> int | None:
    return next((q for q, key in enumerate(ev.queries) if key == (hemi, roi)), None)


def _test_one(claim: Claim, hemi: str, ev: Evidence, settings: ClaimSettings, rng: np.random.Generator) -> dict | None:
    """One row of the table for ``claim`` in ``hemi``; None where the hemisphere has no such ROI."""
    if claim.kind == "prefers":
        if claim.roi not in ev.responses.roi.values:
            raise InputError(f"claim {claim.text!r}", f"{claim.roi} responses are not analysed (not a category or "
                                                       "early visual ROI)")
        x = ev.responses.sel(hemi=hemi, roi=claim.roi).values
        if not np.isfinite(x).any():
            return None
        shows = {c: ev.membership[:, ev.categories.index(c)] for c in (claim.target, claim.other) if c is not None}
        first = shows[claim.target]
        second = shows[claim.other] & ~first if claim.other else ~first
        if claim.other:
            first = first & ~shows[claim.other]  # an image that shows both is evidence for neither
        for name, group in ((claim.target, first), (claim.other or f"not {claim.target}", second)):
            if group.sum() < 2:
                raise InputError(f"claim {claim.text!r}", f"fewer than two images in the group {name!r}"
                                 + (" (images that show both categories are in neither group)" if claim.other else ""))
        row = preference_test(x, first, second, settings, rng)
        row["n_images"] = int(first.sum() + second.sum())
        if ev.reliability is not None and (hemi, claim.roi) in ev.reliability.index:
            row["reliable"] = bool(ev.reliability.loc[(hemi, claim.roi), "reliable"])
            row["r_heldout"] = float(ev.reliability.loc[(hemi, claim.roi), "r_heldout"])
        return row
    q = _query(ev, hemi, claim.roi)
    if q is None:
        return None
    if claim.kind == "routes":
        part = ev.routing.iloc[q]
        if claim.target == "content" and not np.isfinite(part["content_p"]):
            raise InputError(f"claim {claim.text!r}", f"content routing needs category masks, every category's "
                                                       f"known in at least two images; {ev.name} has "
                                                       f"{'none' if ev.coverage is None else 'too few'} (a labels "
                                                       "file with a mask column, or a virtual subject's images)")
        name = "location" if claim.target == "location" else "content"
        low, high = part[f"{name}_ci_low"], part[f"{name}_ci_high"]
        return {"statistic": f"{name}_index", "value": float(part[f"{name}_index"]),
                "effect": float(part[f"{name}_index"]), "ci_low": float(low), "ci_high": float(high),
                "p": float(part[f"{name}_p"]), "p_opposite": np.nan, "n_images": int(part["n_images"])}
    a = ev.attention[:, q]
    density = a / (a @ ev.image)[:, None]  # attention per image pixel
    if claim.kind == "attends_direction":
        weights = direction_weights(claim.target, ev.positions, ev.image)
        share = weights.sum() / ev.image.sum()
        mass = density @ weights
        row = mean_excess_test(mass - share, "mass_minus_area", settings, rng, minimum=settings.min_attention_excess)
        return {**row, "n_images": len(a)}
    if ev.coverage is None:
        raise InputError(f"claim {claim.text!r}", f"attention to a category needs category masks; {ev.name} has "
                                                   "none (a labels file with a mask column, or a virtual subject's "
                                                   "images)")
    c = ev.categories.index(claim.target) if claim.target in ev.categories else None
    if c is None:
        raise InputError(f"claim {claim.text!r}", f"no image shows {claim.target}")
    masks = ev.coverage[:, c]
    area = masks.sum(1) / ev.image.sum()
    use = np.isfinite(area) & (area > 0)
    if use.sum() < 2:
        raise InputError(f"claim {claim.text!r}", f"{int(use.sum())} image(s) of {ev.name} show {claim.target} "
                                                   "with a known mask; the test needs at least two")
    mass = (density[use] * masks[use]).sum(1)
    row = mean_excess_test(mass - area[use], "mass_minus_chance", settings, rng, minimum=settings.min_attention_excess)
    return {**row, "n_images": int(use.sum())}


def test_claims(run: Run | str | Path, claims: Sequence[str | Claim], stimuli: StimulusOptions | None = None,
                settings: ClaimSettings = ClaimSettings(), seed: int = 0,
                cache_dir: str | Path | None = None, data_dir: str | Path | None = None,
                device: str = "cpu") -> pd.DataFrame:
    """Test each claim (sentences of the module's grammar) in each hemisphere; one row per claim x hemisphere.

    Parameters
    ----------
    run : Run or path
        A trained run (or its directory).
    claims : sequence of str or Claim
        The hypotheses; a sentence that does not parse stops here, before
        anything is computed.
    stimuli : StimulusOptions, optional
        A labels file with its folder, categories and masks, as ``tbe
        selectivity`` takes it (:mod:`analyses.stimuli`); its categories are
        those a claim may name. Default: a virtual subject's held-out images,
        else the rendered localizer.
    settings : ClaimSettings
        Permutations, resamples, FDR level and confidence.
    device : str
        Where a run given as a path is opened (backbone, encoder, attention).

    Returns
    -------
    pandas.DataFrame
        :data:`COLUMNS`: the statistic and its value, the effect with its
        interval, p, p_fdr, the opposite's p, ``reliable`` (predicted
        responses: does the run predict the ROI on held-out fMRI) and the
        ``verdict``.
    """
    settings.check()
    vocabulary = claim_vocabulary(stimuli)
    parsed = [c if isinstance(c, Claim) else parse_claim(c, vocabulary) for c in claims]
    if not parsed:
        raise InputError("claims", "no claims to test")
    if not isinstance(run, Run):
        run = open_run(run, data_dir, device)
    chosen = choose_stimuli(run, stimuli, cache_dir, seed)
    for claim in parsed:
        for c in (claim.target, claim.other):
            if claim.kind in ("prefers", "attends_category") and c is not None and c not in chosen.categories:
                raise InputError(f"claim {claim.text!r}", f"no image of {chosen.name} shows {c}; they show "
                                                           f"{', '.join(chosen.categories)}")
    ev = gather_evidence(run, parsed, chosen, settings, seed, cache_dir)
    rng = np.random.default_rng([seed, 11])
    rows = []
    for claim in parsed:
        found = False
        for hemi in claim.hemis:
            row = _test_one(claim, hemi, ev, settings, rng)
            if row is None:
                continue
            found = True
            rows.append({"claim": claim.text.strip(), "hemi": hemi, "roi": claim.roi, "kind": claim.kind,
                         "reliable": pd.NA, "r_heldout": np.nan, **row})
        if not found:
            raise InputError(f"claim {claim.text!r}", f"the run has no {claim.roi} in {' or '.join(claim.hemis)}")
    return verdicts(pd.DataFrame(rows), settings.alpha)[COLUMNS]


test_claims.__test__ = False  # a library function, not a pytest test


def run_claims(run_dir: str | Path, data_dir: str | Path | None, claims_file: str | Path, out_dir: str | Path,
               settings: ClaimSettings = ClaimSettings(), stimuli: StimulusOptions | None = None, seed: int = 0,
               cache_dir: str | Path | None = None, device: str = "cpu") -> pd.DataFrame:
    """``tbe claims``: read the claims file (every line parsed first), test them on ``device``, write ``OUT/claims.csv``."""
    settings.check()
    claims = read_claims(claims_file, claim_vocabulary(stimuli))
    table = test_claims(run_dir, claims, stimuli, settings, seed, cache_dir, data_dir, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "claims.csv", table)
    return table


#: Colour of each verdict in the figures.
VERDICT_COLOURS = {"supported": "tab:green", "not supported": "tab:gray", "contradicted": "tab:red"}


def _rows(table: pd.DataFrame) -> list[str]:
    return [f"{c} ({h})" for c, h in zip(table["claim"], table["hemi"])]


def plot_claims(table: pd.DataFrame, alpha: float = 0.05):
    """Each claim x hemisphere's effect with its interval, coloured by verdict (a figure outside pyplot)."""
    from model.figures import figure

    fig = figure(figsize=(6.5, 0.3 * len(table) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(table))[::-1]
    colours = [VERDICT_COLOURS[v] for v in table["verdict"]]
    err = np.clip([table["effect"] - table["ci_low"], table["ci_high"] - table["effect"]], 0, None)
    ax.errorbar(table["effect"], y, xerr=np.nan_to_num(err), fmt="none", ecolor="0.5", lw=0.8)
    ax.scatter(table["effect"], y, c=colours, zorder=3)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.set_yticks(y, _rows(table), fontsize=7)
    ax.set_xlabel("effect (d' for preferences; excess attention share; routing index)")
    ax.legend(handles=[ax.scatter([], [], c=c, label=k) for k, c in VERDICT_COLOURS.items()], fontsize=7)
    ax.set_title(f"Claims (verdicts at FDR {alpha})", fontsize=9)
    return fig


def plot_evidence(table: pd.DataFrame, alpha: float = 0.05):
    """-log10 p_fdr of each claim x hemisphere, with the level ``alpha`` (a figure outside pyplot)."""
    from model.figures import figure

    fig = figure(figsize=(6.5, 0.3 * len(table) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(table))[::-1]
    ax.barh(y, -np.log10(np.clip(table["p_fdr"].to_numpy(float), 1e-300, 1)),
            color=[VERDICT_COLOURS[v] for v in table["verdict"]])
    ax.axvline(-np.log10(alpha), color="k", lw=0.8, ls="--")
    ax.set_yticks(y, _rows(table), fontsize=7)
    ax.set_xlabel("-log10 p (BH-FDR over the claims)")
    return fig


__all__ = ["COLUMNS", "Claim", "ClaimSettings", "DIRECTIONS", "GRAMMAR", "parse_claim", "parse_claims", "read_claims",
           "plot_claims", "plot_evidence", "run_claims", "test_claims", "verdicts"]
