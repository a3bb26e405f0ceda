"""Does a query's prediction use what its attention selects? The token-deletion test.

For one ROI query and one image, the tokens the query attends to most (the
last decoder layer's cross-attention, averaged over heads) are replaced by
the training images' mean token, the encoder's neutral input (zero after
its standardisation, the baseline of the token attributions), and the
change of the ROI's predicted response is measured as the mean, over the
query's vertices, of the squared change of each vertex's prediction (a
change of the ROI mean would let vertices that move in opposite
directions cancel). The same is done for random sets of as many tokens.
The **deletion ratio** of a query is

    mean over images of the change (top-attended tokens replaced)
    / mean over images of the change (random tokens replaced),

with a percentile bootstrap interval over images. Squared changes add up
over tokens that contribute independently, so for such a prediction the
ratio is the share of the prediction's dependence on the tokens that the
top-attended fraction ``f`` carries, divided by ``f``: about 1 when the
attention is unrelated to what the prediction uses (replacing what it
points at changes no more than replacing anything else), at most ``1 / f``
(5 for the default 20%) when all of it lies in the top-attended tokens,
below 1 when the attention points away from it. A query is called
*faithful* when its ratio reaches :data:`MIN_RATIO` (3: at least 60% of
what the prediction uses lies in the top-attended fifth of the image).
Nonlinear predictions can exceed ``1 / f``.

The test needs the encoder's cross-attention and nothing else, so it runs
on cached tokens without the backbone; ``tbe train`` runs it on the
validation images of every run whose encoder has decoder attention, and
``tbe check-maps`` reports it next to the maps' other checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .device import module_device
from .metrics import reliability_test

#: share of the tokens replaced: the most-attended ones, or a random set of as many
FRACTION = 0.2
#: deletion ratio from which a query's attention counts as faithful
MIN_RATIO = 3.0
#: random token sets per image whose changes are averaged into its reference change
N_RANDOM = 4


@dataclass(frozen=True)
class DeletionChanges:
    """Per image and query, the ROI's mean squared prediction change when its top-attended or random tokens are replaced.

    ``top`` and ``random`` are (images, queries); ``random`` is the mean over
    :data:`N_RANDOM` random token sets (the same sets for every query).
    """

    top: np.ndarray
    random: np.ndarray
    fraction: float


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
                     n_random: int = N_RANDOM, seed: int = 0, batch_size: int = 16) -> DeletionChanges:
    """The prediction changes behind the deletion ratio (see the module), for every query of ``encoder``.

    Parameters
    ----------
    encoder : torch.nn.Module
        A run's encoder whose capabilities include ``decoder_attention``.
    features : array (N, T, C)
        Backbone tokens of the images (a memory-mapped cache entry is read a batch at a time).
    memberships : bool array (V, Q)
        Which vertices each query reads out to (:attr:`model.readout.QuerySet.memberships`).
    fraction : float
        Share of the tokens replaced (at least one token).
    n_random : int
        Random token sets per image.
    seed : int
        Seed of the random sets.
    batch_size : int
        Images per forward pass; memory does not grow with the number of images.
    """
    if not encoder.capabilities.decoder_attention:
        raise TypeError(f"{type(encoder).__name__} has no decoder attention to test")
    dev = module_device(encoder)
    members = torch.as_tensor(np.asarray(memberships, bool), dtype=torch.float64, device=dev)
    token = mean_token(encoder).to(dev)
    n, t = len(features), features.shape[1]
    k = max(1, int(round(fraction * t)))
    generator = torch.Generator().manual_seed(seed)
    n_queries = members.shape[1]
    top, random = np.zeros((n, n_queries)), np.zeros((n, n_queries))
    for start in range(0, n, batch_size):
        x = torch.as_tensor(np.asarray(features[start:start + batch_size], np.float32), device=dev)
        b = len(x)
        out = encoder(x, return_attention=True)
        pred, attention = out["pred"].float(), out["attention"][:, -1].float().mean(1)  # (B, Q, T)
        # every query's perturbation of every image as one batch: (B * Q) images, query fastest
        index = torch.topk(attention, k, dim=2).indices.flatten(0, 1)  # (B * Q, k)
        change = _predict_replaced(encoder, x, index, token, 4 * batch_size).view(b, n_queries, -1) - pred[:, None]
        own = (change.double() ** 2 * members.T[None]).sum(2) / members.sum(0)  # each query over its own vertices
        top[start:start + b] = own.cpu().numpy()
        for _ in range(n_random):
            index = torch.argsort(torch.rand(b, t, generator=generator), dim=1)[:, :k].to(dev)
            change = encoder(_replace(x, index, token))["pred"].float() - pred
            random[start:start + b] += _mean_square_per_query(change, members).cpu().numpy() / n_random
    return DeletionChanges(top, random, fraction)


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


def deletion_ratios(changes: DeletionChanges, names: list[str], n_bootstrap: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> pd.DataFrame:
    """One row per query: ``deletion_ratio`` with its percentile bootstrap interval over images, and ``faithful``.

    Columns: ``query`` (``hemi:roi``), ``hemi``, ``roi``, ``change_top`` and
    ``change_random`` (mean over images), ``deletion_ratio``,
    ``deletion_ratio_ci_low``/``_high`` (the interval of the ratio, images
    resampled), ``faithful`` (ratio >= :data:`MIN_RATIO`; False where no
    replacement changes the prediction) and ``n_images``.
    """
    top, rand = changes.top, changes.random
    n = len(top)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, (n_bootstrap, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = top.mean(0) / rand.mean(0)
        boot = top[resamples].mean(1) / rand[resamples].mean(1)  # (n_bootstrap, Q)
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(boot, tail, axis=0), np.nanquantile(boot, 1 - tail, axis=0)
    hemis, rois = zip(*(name.split(":", 1) for name in names)) if names else ((), ())
    return pd.DataFrame({
        "query": names, "hemi": hemis, "roi": rois, "change_top": top.mean(0), "change_random": rand.mean(0),
        "deletion_ratio": ratio, "deletion_ratio_ci_low": low, "deletion_ratio_ci_high": high,
        "faithful": np.nan_to_num(ratio, nan=0.0) >= MIN_RATIO, "n_images": n,
    })


#: validation images the training summary's deletion test runs on (the interval is over these)
SUMMARY_IMAGES = 32


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

    ``table`` has ``query``, ``deletion_ratio``, ``faithful`` and ``reliable``.
    """
    reliable = table[table["reliable"].astype(bool)]
    unfaithful = reliable[~reliable["faithful"].astype(bool)]
    return {"min_ratio": MIN_RATIO, "fraction": FRACTION, "n_images": int(table["n_images"].max()) if len(table) else 0,
            "n_queries": int(len(table)), "n_reliable": int(len(reliable)),
            "n_faithful_reliable": int(len(reliable) - len(unfaithful)),
            "median_ratio_reliable": float(reliable["deletion_ratio"].median()) if len(reliable) else float("nan"),
            "unfaithful": {q: round(float(r), 3) for q, r in zip(unfaithful["query"], unfaithful["deletion_ratio"])},
            "faithful": bool(len(reliable)) and unfaithful.empty}


def describe_faithfulness(summary: dict) -> str:
    """One line for a run's summary: faithful or not, in numbers."""
    head = (f"attention faithfulness (top-{summary['fraction']:.0%} deletion ratio >= {summary['min_ratio']:g}, "
            f"{summary['n_images']} validation images): {summary['n_faithful_reliable']} of {summary['n_reliable']} "
            f"reliably predicted queries")
    if summary["n_reliable"] == 0:
        return head + " (none is reliably predicted: the attention cannot be judged)"
    if summary["faithful"]:
        return head + f" (median ratio {summary['median_ratio_reliable']:.1f})"
    worst = sorted(summary["unfaithful"].items(), key=lambda kv: kv[1])[:6]
    return (head + "; NOT FAITHFUL: the predictions of " + ", ".join(f"{q} ({r:.1f})" for q, r in worst)
            + (" ..." if len(summary["unfaithful"]) > 6 else "") + " barely use what their attention selects")


__all__ = ["DeletionChanges", "FRACTION", "MIN_RATIO", "N_RANDOM", "deletion_changes", "deletion_ratios", "describe_faithfulness",
           "faithfulness_summary", "mean_token", "query_reliability", "SUMMARY_IMAGES"]
