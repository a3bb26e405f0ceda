"""Does a query's prediction use what its attention selects? The token-deletion tests.

For one ROI query and one image, the tokens the query attends to most (the
last decoder layer's cross-attention, averaged over heads; the top
``fraction``, 20% by default) are replaced by the training images' mean
token, the encoder's neutral input (zero after its standardisation, the
baseline of the token attributions), and the change of the ROI's predicted
response is measured as the mean, over the query's vertices, of the squared
change of each vertex's prediction (a change of the ROI mean would let
vertices that move in opposite directions cancel). Two controls replace as
many other tokens:

**deletion ratio**
    ROI change with its top-attended tokens replaced / ROI change with a
    random 20% replaced (each a mean over images; the random change is
    averaged over :data:`N_RANDOM` random sets). Squared changes add up over
    tokens that contribute independently, so for such a prediction the
    ratio is the share of what the prediction uses that the top-attended
    tokens carry, divided by their share of the image: about 1 when the
    attention is unrelated to it, up to ``1 / fraction`` (5) when all of it
    lies there (nonlinear predictions can go beyond).
**specificity**
    ROI change with its *own* query's top-attended tokens replaced / the
    median over the other queries of the ROI change with *their*
    top-attended tokens replaced. Tokens that every query attends to a
    little more (the most salient ones: contrast, text) raise every query's
    deletion ratio: a near-uniform attention that leans towards salient
    tokens has a deletion ratio of 10 and says nothing about where its ROI
    looks (measured on a second virtual subject, ``docs/attention.md``).
    Specificity is about 1 for such an attention and well above 1 when a
    query selects tokens that its ROI, more than the others, depends on.

Both come with percentile bootstrap intervals over images. A query's
attention is called *faithful* when its deletion ratio reaches
:data:`MIN_RATIO` and its specificity :data:`MIN_SPECIFICITY`.

The test needs the encoder's cross-attention and nothing else, so it runs
on cached tokens without the backbone; ``tbe train`` runs it on the
validation images of every run whose encoder has decoder attention, and
``tbe check-maps`` reports it next to the maps' other checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..device import module_device
from ..errors import OptionError
from ..metrics import reliability_test

#: share of the tokens replaced: the most-attended ones, or a random set of as many
FRACTION = 0.2
#: deletion ratio from which a query's attention counts as faithful (60% of what is used in the top fifth)
MIN_RATIO = 3.0
#: specificity from which a query's attention counts as faithful: its own top tokens matter 1.2x more to its
#: ROI than the other queries' top tokens do. Near-uniform attention measured 0.97-1.06 (the retinotopic
#: readout on the second virtual subject of docs/attention.md); the windows default 1.2-3.3 on both subjects.
MIN_SPECIFICITY = 1.2
#: random token sets per image whose changes are averaged into its reference change
N_RANDOM = 4
#: most queries the test measures: it perturbs each image once per query and decodes every query each time,
#: so its cost grows with the square of the queries (one query per vertex, ``readout_res`` voxels, is out of reach)
MAX_QUERIES = 256


@dataclass(frozen=True)
class DeletionChanges:
    """Per image, the ROIs' mean squared prediction changes when tokens are replaced.

    ``cross`` is (images, queries whose top tokens are replaced, queries
    whose ROI changes): its diagonal is each ROI's change under its own
    query's deletion; ``random`` (images, queries) is each ROI's change with
    random tokens replaced, the mean over :data:`N_RANDOM` sets (the same
    sets for every query).
    """

    cross: np.ndarray
    random: np.ndarray
    fraction: float

    @property
    def top(self) -> np.ndarray:
        """(images, queries): each ROI's change under its own query's deletion."""
        return np.diagonal(self.cross, axis1=1, axis2=2)


def mean_token(encoder: torch.nn.Module) -> torch.Tensor:
    """The training images' mean token (C,): what the encoder's standardisation maps to zero."""
    return encoder.feature_mean.detach()


def _mean_square_per_query(change: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """(B, V) change, (V, Q) memberships -> (B, Q) mean square over each query's vertices."""
    return (change.double() ** 2) @ members / members.sum(0)


def _replace(x: torch.Tensor, index: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """``x`` (B, T, C) with the tokens ``index`` (B, k) of each image set to ``token``."""
    out = x.clone()
    out.scatter_(1, index[:, :, None].expand(-1, -1, x.shape[-1]), token.expand(*index.shape, -1).to(x.dtype))
    return out


@torch.no_grad()
def deletion_changes(encoder: torch.nn.Module, features, memberships: np.ndarray, fraction: float = FRACTION,
                     n_random: int = N_RANDOM, seed: int = 0, batch_size: int = 16, first_image: int = 0
                     ) -> DeletionChanges:
    """The prediction changes behind the deletion ratio (see the module), for every query of ``encoder``.

    Parameters
    ----------
    encoder : torch.nn.Module
        A run's encoder whose capabilities include ``decoder_attention``.
    features : array (N, T, C)
        Backbone tokens of the images (a memory-mapped cache entry is read a batch at a time).
    memberships : bool array (V, Q)
        Which vertices each query reads out to (:attr:`model.encoders.queries.QuerySet.memberships`).
    fraction : float
        Share of the tokens replaced (at least one token).
    n_random : int
        Random token sets per image.
    seed : int
        Seed of the random sets; each image's sets are drawn from it and the
        image's position (``first_image`` + its row), so images measured in
        batches get the sets they would get all at once.
    batch_size : int
        Images per forward pass; memory does not grow with the number of images.
    first_image : int
        Position of the first of ``features`` among all images measured.
    """
    if not encoder.capabilities.decoder_attention:
        raise TypeError(f"{type(encoder).__name__} has no decoder attention to test")
    if not measurable(memberships):
        raise OptionError("readout_res", f"the attention's deletion test measures at most {MAX_QUERIES} queries; this "
                                         f"run has {np.shape(memberships)[1]}")
    dev = module_device(encoder)
    members = torch.as_tensor(np.asarray(memberships, bool), dtype=torch.float64, device=dev)
    token = mean_token(encoder).to(dev)
    n, t = len(features), features.shape[1]
    k = max(1, int(round(fraction * t)))
    n_queries = members.shape[1]
    cross, random = np.zeros((n, n_queries, n_queries)), np.zeros((n, n_queries))
    for start in range(0, n, batch_size):
        x = torch.as_tensor(np.asarray(features[start:start + batch_size], np.float32), device=dev)
        b = len(x)
        out = encoder(x, return_attention=True)
        pred, attention = out["pred"].float(), out["attention"][:, -1].float().mean(1)  # (B, Q, T)
        # every query's perturbation of every image as one batch: (B * Q) images, query fastest
        index = torch.topk(attention, k, dim=2).indices.flatten(0, 1)  # (B * Q, k)
        change = _predict_replaced(encoder, x, index, token, 4 * batch_size) - pred.repeat_interleave(n_queries, 0)
        cross[start:start + b] = _mean_square_per_query(change, members).view(b, n_queries, n_queries).cpu().numpy()
        draws = _random_sets(n_random, b, t, k, seed, first_image + start).to(dev)  # (n_random, B, k)
        for index in draws:
            change = encoder(_replace(x, index, token))["pred"].float() - pred
            random[start:start + b] += _mean_square_per_query(change, members).cpu().numpy() / n_random
    return DeletionChanges(cross, random, fraction)


def measurable(memberships: np.ndarray) -> bool:
    """Whether the deletion test can measure these queries (at most :data:`MAX_QUERIES`)."""
    return np.shape(memberships)[1] <= MAX_QUERIES


def not_measured(n_queries: int) -> dict:
    """The summary of a run whose queries are too many for the deletion test: it says so, and judges nothing."""
    return {"measured": False, "n_queries": int(n_queries), "faithful": False,
            "reason": f"{n_queries} queries; the deletion test measures at most {MAX_QUERIES} (it decodes every query "
                      "once per query and image)"}


def _random_sets(n_random: int, b: int, t: int, k: int, seed: int, first: int) -> torch.Tensor:
    """(n_random, b, k) random token sets; image ``first + i``'s come from its own generator."""
    out = torch.empty(n_random, b, k, dtype=torch.long)
    for i in range(b):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + first + i)
        out[:, i] = torch.argsort(torch.rand(n_random, t, generator=generator), dim=1)[:, :k]
    return out


def concatenate(parts: list[DeletionChanges]) -> DeletionChanges:
    """The changes of batches of images, in their order, as one."""
    return DeletionChanges(np.concatenate([p.cross for p in parts]), np.concatenate([p.random for p in parts]),
                           parts[0].fraction)


def _predict_replaced(encoder: torch.nn.Module, x: torch.Tensor, index: torch.Tensor, token: torch.Tensor,
                      chunk: int) -> torch.Tensor:
    """Predictions (B * R, V) of each image of ``x`` (B, T, C) repeated R times, row j with the tokens ``index[j]``
    replaced; at most ``chunk`` perturbed images exist at a time."""
    repeats = len(index) // len(x)
    out = []
    for start in range(0, len(index), chunk):
        rows = torch.arange(start, min(start + chunk, len(index)), device=x.device)
        out.append(encoder(_replace(x[rows // repeats], index[rows], token))["pred"].float())
    return torch.cat(out)


def _ratio_of_means(numerator: np.ndarray, denominator: np.ndarray, resamples: np.ndarray, confidence: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio of the image means of two (images, queries) arrays, and its percentile bootstrap interval."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numerator.mean(0) / denominator.mean(0)
        boot = numerator[resamples].mean(1) / denominator[resamples].mean(1)  # (n_bootstrap, Q)
    tail = (1 - confidence) / 2
    return ratio, np.nanquantile(boot, tail, axis=0), np.nanquantile(boot, 1 - tail, axis=0)


def _specificity(cross: np.ndarray) -> np.ndarray:
    """(queries,) from an image-averaged cross matrix: each ROI's change under its own query's deletion over
    the median of its changes under the other queries' deletions (NaN with one query)."""
    n_queries = len(cross)
    if n_queries < 2:
        return np.full(n_queries, np.nan)
    others = np.array([np.median(np.delete(cross[:, q], q)) for q in range(n_queries)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.diagonal(cross) / others


def deletion_ratios(changes: DeletionChanges, names: list[str], n_bootstrap: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> pd.DataFrame:
    """One row per query: deletion ratio and specificity with their bootstrap intervals, and ``faithful``.

    Columns: ``query`` (``hemi:roi``), ``hemi``, ``roi``, ``deletion_ratio``
    and ``specificity`` (see the module), each with ``_ci_low``/``_ci_high``
    (the interval of that ratio, images resampled), ``faithful`` (both at
    their minimum; False where nothing changes the prediction) and
    ``n_images``. With a single query there is no other query to compare
    with: its specificity is NaN and it is judged on the deletion ratio.
    """
    top, rand = changes.top, changes.random
    n, n_queries = top.shape
    resamples = np.random.default_rng(seed).integers(0, n, (n_bootstrap, n))
    ratio, ratio_low, ratio_high = _ratio_of_means(top, rand, resamples, confidence)
    spec = _specificity(changes.cross.mean(0))
    boot = np.stack([_specificity(changes.cross[r].mean(0)) for r in resamples])
    tail = (1 - confidence) / 2
    with np.errstate(all="ignore"):
        spec_low, spec_high = np.nanquantile(boot, tail, axis=0), np.nanquantile(boot, 1 - tail, axis=0)
    hemis, rois = zip(*(name.split(":", 1) for name in names)) if names else ((), ())
    specific = np.where(np.isnan(spec), True, np.nan_to_num(spec, nan=0.0) >= MIN_SPECIFICITY)
    return pd.DataFrame({
        "query": names, "hemi": hemis, "roi": rois,
        "deletion_ratio": ratio, "deletion_ratio_ci_low": ratio_low, "deletion_ratio_ci_high": ratio_high,
        "specificity": spec, "specificity_ci_low": spec_low, "specificity_ci_high": spec_high,
        "faithful": (np.nan_to_num(ratio, nan=0.0) >= MIN_RATIO) & specific, "n_images": n,
    })


#: validation images the training summary's deletion test runs on (the interval is over these). At 32, one
#: faithful query of the second virtual subject (specificity 1.2-1.5 on 60 validation and on 100 test images)
#: measured 1.02-1.19 at four training seeds of five and was called not faithful (docs/attention.md)
SUMMARY_IMAGES = 64


def query_reliability(pred: np.ndarray, measured: np.ndarray, memberships: np.ndarray, valid: np.ndarray | None = None,
                      alpha: float = 0.05) -> pd.DataFrame:
    """Per query: is its vertices' mean prediction related to their mean measurement (:func:`~model.metrics.reliability_test`)?

    ``pred`` and ``measured`` are (images, vertices) over held-out images;
    ``valid`` (vertices,) leaves out vertices without measurements.
    """
    members = np.asarray(memberships, bool) & (np.ones(len(memberships), bool) if valid is None else
                                               np.asarray(valid, bool))[:, None]
    counts = np.clip(members.sum(0), 1, None)
    return reliability_test(np.asarray(pred, np.float64) @ members / counts,
                            np.asarray(measured, np.float64) @ members / counts, alpha)


def faithfulness_summary(table: pd.DataFrame) -> dict:
    """What a run's summary says: how many reliably predicted queries have a faithful attention, and which do not.

    ``table`` has ``query``, ``deletion_ratio``, ``specificity``, ``faithful`` and ``reliable``.
    """
    reliable = table[table["reliable"].astype(bool)]
    unfaithful = reliable[~reliable["faithful"].astype(bool)]
    median = (lambda c: float(reliable[c].median()) if len(reliable) else float("nan"))
    return {"min_ratio": MIN_RATIO, "min_specificity": MIN_SPECIFICITY, "fraction": FRACTION,
            "n_images": int(table["n_images"].max()) if len(table) else 0,
            "n_queries": int(len(table)), "n_reliable": int(len(reliable)),
            "n_faithful_reliable": int(len(reliable) - len(unfaithful)),
            "median_ratio_reliable": median("deletion_ratio"), "median_specificity_reliable": median("specificity"),
            "unfaithful": {row["query"]: _ratios_of(row) for _, row in unfaithful.iterrows()},
            "faithful": bool(len(reliable)) and unfaithful.empty}


def _ratios_of(row: pd.Series) -> dict:
    """A query's two ratios, rounded, with their intervals where the table has them."""
    out = {}
    for name in ("deletion_ratio", "specificity"):
        out[name] = round(float(row[name]), 3)
        if f"{name}_ci_low" in row.index:
            out[f"{name}_ci"] = [round(float(row[f"{name}_ci_{end}"]), 3) for end in ("low", "high")]
    return out


def _interval(values: dict, name: str, digits: int) -> str:
    """`` [low, high]`` of a ratio recorded by :func:`_ratios_of`, '' for summaries written without intervals."""
    ci = values.get(f"{name}_ci")
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def _undecided(values: dict) -> bool:
    """Whether an unfaithful query's intervals reach both minimums: more images could show it faithful."""
    ratio_ci, spec_ci = values.get("deletion_ratio_ci"), values.get("specificity_ci")
    return bool(ratio_ci and spec_ci) and ratio_ci[1] >= MIN_RATIO and (
        not np.isfinite(spec_ci[1]) or spec_ci[1] >= MIN_SPECIFICITY)


def run_summary(encoder: torch.nn.Module, tokens: Callable[[], np.ndarray], memberships: np.ndarray, names: list[str],
                reliability: pd.DataFrame) -> dict:
    """What a run records of the test: :func:`faithfulness_summary` and every query's row, or :func:`not_measured`.

    ``tokens()`` gives the images' tokens; it is called only when the queries
    are :func:`measurable`. ``reliability`` holds :func:`query_reliability`'s
    columns, a row per query in the order of ``names``.
    """
    if not measurable(memberships):
        return not_measured(np.shape(memberships)[1])
    ratios = deletion_ratios(deletion_changes(encoder, tokens(), memberships), names)
    table = pd.concat([ratios, reliability.reset_index(drop=True)], axis=1)
    return {**faithfulness_summary(table), "queries": table.round(4).to_dict(orient="records")}


def describe_faithfulness(summary: dict) -> str:
    """One line for a run's summary: faithful or not, in numbers."""
    if summary.get("measured") is False:
        return f"attention faithfulness: not measured ({summary['reason']})"
    head = (f"attention faithfulness ({summary['n_images']} validation images; faithful when replacing a query's "
            f"top-attended {summary['fraction']:.0%} of tokens changes its ROI's prediction >= "
            f"{summary['min_ratio']:g}x more than a random {summary['fraction']:.0%} and >= "
            f"{summary['min_specificity']:g}x more than the other queries' top tokens): "
            f"{summary['n_faithful_reliable']} of {summary['n_reliable']} reliably predicted queries")
    if summary["n_reliable"] == 0:
        return head + " (none is reliably predicted: the attention cannot be judged)"
    if summary["faithful"]:
        return head + (f" (median deletion ratio {summary['median_ratio_reliable']:.1f}, specificity "
                       f"{summary['median_specificity_reliable']:.1f})")
    return head + "; NOT FAITHFUL" + _unfaithful_queries(summary["unfaithful"])


def _unfaithful_queries(unfaithful: dict) -> str:
    """The worst six unfaithful queries with their ratios (and intervals), and which more images could settle."""
    worst = sorted(unfaithful.items(), key=lambda kv: kv[1]["specificity"])[:6]
    labelled = " (95% bootstrap intervals over the images in brackets)" if any("specificity_ci" in v for _, v in worst) else ""
    named = ", ".join(f"{q} (ratio {v['deletion_ratio']:.1f}{_interval(v, 'deletion_ratio', 1)}, specificity "
                      f"{v['specificity']:.2f}{_interval(v, 'specificity', 2)})" for q, v in worst)
    undecided = [q for q, v in unfaithful.items() if _undecided(v)]
    settle = (f"; the intervals of {', '.join(undecided)} reach both minimums: `tbe check-maps` on more images "
              "(--n-images) can tell" if undecided else "")
    return (f"{labelled}: {named}{' ...' if len(unfaithful) > 6 else ''}: their attention maps do not show what their "
            f"predictions use{settle}")


__all__ = ["DeletionChanges", "FRACTION", "MAX_QUERIES", "MIN_RATIO", "MIN_SPECIFICITY", "N_RANDOM", "SUMMARY_IMAGES",
           "concatenate", "deletion_changes", "deletion_ratios", "describe_faithfulness", "faithfulness_summary",
           "mean_token", "measurable", "not_measured", "query_reliability", "run_summary"]
