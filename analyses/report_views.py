"""What the report notebooks show: display helpers, figures and summary tables.

The notebooks in ``notebooks/`` stay thin: they call :mod:`model`,
:mod:`interpret` and :mod:`analyses`, and this module for everything about
showing results (figures as embedded PNG, one-line summaries the report index
picks up, tables arranged for reading). Heavy imports happen inside the
functions, so :func:`setup_notebook` can quiet warnings before any library
that warns at import time is loaded.
"""
from __future__ import annotations

import io
import logging
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

#: Output metadata key of a notebook's one-line summary (read by :mod:`analyses.report`)
SUMMARY_KEY = "tbe_summary"


# --------------------------------------------------------------------------
# Notebook set-up and display
# --------------------------------------------------------------------------

def setup_notebook(seed: int | None = None) -> None:
    """Quiet, reproducible notebook output: no warnings or progress bars on stderr, seeded RNGs.

    Warnings are silenced (they would appear as stderr streams in the
    report), log messages of warning level and above go to stdout, and
    ``matplotlib`` draws off-screen (figures are shown with :func:`show`).
    """
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s: %(message)s", force=True)
    import matplotlib

    matplotlib.use("Agg")
    pd.set_option("display.precision", 3)
    pd.set_option("display.max_rows", 200)
    if seed is not None:
        seed_everything(seed)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's random number generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def as_list(value: Any) -> list[str] | None:
    """A list parameter given as a list, a comma-separated string, or empty/``'all'`` (None: everything)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    items = [str(v) for v in value]
    return None if not items or items == ["all"] else items


def optional_path(value: str | Path | None) -> Path | None:
    """A path parameter; empty means none."""
    return Path(value) if value not in (None, "") else None


def show(figure: Any, save_as: str | Path | None = None) -> None:
    """Display a matplotlib figure or a PNG file as an embedded image (and close the figure).

    ``save_as`` also writes the figure to that PNG file.
    """
    from IPython.display import Image, display

    if isinstance(figure, (str, Path)):
        display(Image(filename=str(figure)))
        return
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    if save_as is not None:
        Path(save_as).parent.mkdir(parents=True, exist_ok=True)
        Path(save_as).write_bytes(buffer.getvalue())
    display(Image(data=buffer.getvalue(), format="png"))


def summary(text: str) -> None:
    """Display the notebook's one-line summary; the report's index shows it next to the notebook."""
    from IPython.display import Markdown, display

    display(Markdown(f"**Summary.** {text}"), metadata={SUMMARY_KEY: text})


def note(text: str) -> None:
    """Display a line of Markdown (a remark about what is or is not shown)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def out_folder(out_dir: str | Path) -> Path:
    """The folder a notebook writes its tables and figures to (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------
# Encoding accuracy
# --------------------------------------------------------------------------

def accuracy_figure(table: pd.DataFrame, models: list[str]):
    """Mean r per ROI of each encoder (bars) and the noise ceiling (ticks), one row per hemisphere."""
    import matplotlib.pyplot as plt

    rows = table[table.roi != "all"]
    hemis = list(dict.fromkeys(rows.hemi))
    fig, axes = plt.subplots(len(hemis), 1, figsize=(max(6, 0.45 * rows.roi.nunique() + 2), 3.2 * len(hemis)),
                             squeeze=False)
    width = 0.8 / max(1, len(models))
    for ax, hemi in zip(axes[:, 0], hemis):
        h = rows[rows.hemi == hemi].reset_index(drop=True)
        x = np.arange(len(h))
        for k, name in enumerate(models):
            ax.bar(x + (k - (len(models) - 1) / 2) * width, h[f"r_{name}"], width=width, label=name)
        if "r_ceiling" in h:
            ax.scatter(x, h["r_ceiling"], marker="_", s=250, color="black", zorder=3, label="noise ceiling (r)")
        ax.set_xticks(x, h.roi, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(f"{hemi}: mean r")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0, 0].legend(fontsize=8, ncol=len(models) + 1, loc="lower left", bbox_to_anchor=(0, 1.02), frameon=False)
    fig.tight_layout()
    return fig


def vertex_scatter(a, b, subject) -> Any:
    """Per-vertex r of encoder ``a`` against encoder ``b`` (VertexScores), coloured by ROI class."""
    import matplotlib.pyplot as plt

    from model.rois import HEMIS, NON_STREAM_CLASSES

    fig, axes = plt.subplots(1, len(HEMIS), figsize=(5 * len(HEMIS), 4.5), squeeze=False)
    for ax, hemi in zip(axes[0], HEMIS):
        ax.scatter(b.r[hemi], a.r[hemi], s=2, color="lightgrey", label="other")
        for roi_class in NON_STREAM_CLASSES:
            mask = subject.labels[roi_class][hemi] > 0
            ax.scatter(b.r[hemi][mask], a.r[hemi][mask], s=3, label=roi_class)
        lo = np.nanmin([np.nanmin(a.r[hemi]), np.nanmin(b.r[hemi])])
        hi = np.nanmax([np.nanmax(a.r[hemi]), np.nanmax(b.r[hemi])])
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.7)
        ax.set_xlabel(f"{b.name} r")
        ax.set_ylabel(f"{a.name} r")
        ax.set_title(hemi)
    axes[0, -1].legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    return fig


def training_curve(metrics: dict) -> Any:
    """Training loss and validation r per epoch, from a run's ``metrics.json``."""
    import matplotlib.pyplot as plt

    history = pd.DataFrame(metrics.get("history", []))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    if len(history):
        ax1.plot(history.epoch, history.train_loss, marker="o")
        for column in ("val_r_lh", "val_r_rh", "val_r"):
            if column in history:
                ax2.plot(history.epoch, history[column], marker="o", label=column)
        ax2.legend(fontsize=8)
    ax1.set(xlabel="epoch", ylabel="training loss")
    ax2.set(xlabel="epoch", ylabel="validation r")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Images and maps
# --------------------------------------------------------------------------

def prepare_images(run, job, cache_dir: str | Path | None = None, images: Any = None, seed: int = 0):
    """The job's images: the first ``job.n_images`` of its split, ``'random'`` ones, or the named/indexed ones.

    ``images`` may be empty (the first ones, as ``tbe interpret``), the word
    ``random`` (``job.n_images`` drawn with ``seed``), or a list of file
    names or positions within the split.
    """
    from interpret.maps import select_images
    from interpret.pipeline import load_inputs, prepare
    from model.errors import InputError

    chosen = as_list(images)
    if chosen is None:
        return prepare(run, job, cache_dir)
    pool = select_images(run, job.split, 10**9)
    if chosen == ["random"]:
        idx = np.random.default_rng(seed).choice(len(pool), size=min(job.n_images, len(pool)), replace=False)
        paths = [pool[i] for i in sorted(idx)]
    else:
        by_name = {p.name: p for p in pool}
        paths = []
        for item in chosen:
            if item in by_name:
                paths.append(by_name[item])
            elif item.isdigit() and int(item) < len(pool):
                paths.append(pool[int(item)])
            else:
                raise InputError("images", f"{item!r} is neither a {job.split} image name nor a position below {len(pool)}")
    return load_inputs(run, paths, job.map_size, cache_dir)


def present_rois(ds, hemi: str, variable: str) -> list[str]:
    """ROIs of a maps dataset that have maps in ``hemi``."""
    arr = ds[variable].sel(hemi=hemi)
    return [str(r) for r in ds.roi.values if np.isfinite(arr.sel(roi=r).values).all()]


def _image_array(image) -> np.ndarray:
    return image.permute(1, 2, 0).numpy() if hasattr(image, "permute") else np.asarray(image)


def _overlay(ax, img: np.ndarray, m: np.ndarray) -> None:
    """A map over its image (stretched to the image's extent)."""
    side = img.shape[0]
    ax.imshow(img)
    if np.isfinite(m).all():
        ax.imshow(m, cmap="inferno", alpha=0.6, extent=(0, side, side, 0), interpolation="bilinear")
    ax.set_xticks([]), ax.set_yticks([])


def attention_grid(ds, images, hemi: str, rois: list[str], variable: str = "attention_mean"):
    """Rows: images; columns: the image, then each ROI query's attention over it."""
    import matplotlib.pyplot as plt

    n = len(ds.image)
    fig, axes = plt.subplots(n, len(rois) + 1, figsize=(1.9 * (len(rois) + 1), 1.9 * n), squeeze=False)
    for i in range(n):
        img = _image_array(images[i])
        axes[i, 0].imshow(img)
        axes[i, 0].set_xticks([]), axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(str(ds.image.values[i])[:18], fontsize=7)
        for j, roi in enumerate(rois, start=1):
            _overlay(axes[i, j], img, ds[variable].sel(hemi=hemi, roi=roi).values[i])
            if i == 0:
                axes[i, j].set_title(f"{hemi} {roi}", fontsize=8)
    fig.suptitle(f"{variable.replace('_', ' ')} ({hemi})", fontsize=10)
    fig.tight_layout()
    return fig


def head_grid(ds, images, hemi: str, roi: str):
    """Rows: images; columns: each attention head of one ROI query."""
    import matplotlib.pyplot as plt

    att = ds["attention"].sel(hemi=hemi, roi=roi)
    n, heads = len(ds.image), att.sizes["head"]
    fig, axes = plt.subplots(n, heads, figsize=(1.8 * heads, 1.8 * n), squeeze=False)
    for i in range(n):
        img = _image_array(images[i])
        for h in range(heads):
            _overlay(axes[i, h], img, att.isel(image=i, head=h).values)
            if i == 0:
                axes[i, h].set_title(f"head {h}", fontsize=8)
    fig.suptitle(f"{hemi} {roi}: attention per head", fontsize=10)
    fig.tight_layout()
    return fig


def attention_centres(ds, grid, variable: str = "attention_mean") -> pd.DataFrame:
    """Per (hemi, ROI): the attention's centre of mass in degrees (mean over images), its spread, and focus.

    ``focus`` is 1 minus the normalised entropy of the map: 0 for attention
    spread evenly over the image, 1 for attention on a single cell.
    """
    from interpret.checks import centre_of_mass_deg

    rows = []
    arr = ds[variable]
    cells = arr.sizes["y"] * arr.sizes["x"]
    for hemi in arr.hemi.values:
        for roi in arr.roi.values:
            maps = arr.sel(hemi=hemi, roi=roi).values
            if not np.isfinite(maps).all():
                continue
            centres = np.array([centre_of_mass_deg(m, grid) for m in maps])
            p = np.clip(maps.reshape(len(maps), -1), 0, None)
            p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
            entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(1) / np.log(cells)
            rows.append({"hemi": str(hemi), "roi": str(roi), "x_deg": float(np.nanmean(centres[:, 0])),
                         "y_deg": float(np.nanmean(centres[:, 1])),
                         "spread_deg": float(np.nanmean(np.hypot(*(centres - np.nanmean(centres, 0)).T))),
                         "focus": float(np.mean(1 - entropy))})
    return pd.DataFrame(rows)


def mean_map_grid(ds, hemi: str, rois: list[str], methods: list[str]):
    """Rows: ROIs; columns: methods; each map averaged over the images (signed maps in red/blue)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rois), len(methods), figsize=(2.2 * len(methods), 2.0 * len(rois)), squeeze=False)
    for i, roi in enumerate(rois):
        for j, name in enumerate(methods):
            ax = axes[i, j]
            m = ds[name].sel(hemi=hemi, roi=roi)
            m = (m.mean("head") if "head" in m.dims else m).mean("image").values
            ax.set_xticks([]), ax.set_yticks([])
            if np.isfinite(m).all():
                signed = m.min() < 0
                lim = float(np.abs(m).max()) or 1.0
                ax.imshow(m, cmap="RdBu_r" if signed else "inferno", vmin=-lim if signed else None,
                          vmax=lim if signed else None)
            if i == 0:
                ax.set_title(name.replace("_", " "), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{hemi} {roi}", fontsize=8)
    fig.suptitle(f"maps averaged over images ({hemi})", fontsize=10)
    fig.tight_layout()
    return fig


def map_variables(ds, methods: Iterable[str]) -> list[str]:
    """The dataset variables of the requested methods (``attention`` -> ``attention_mean``)."""
    return [("attention_mean" if m == "attention" else m) for m in methods
            if ("attention_mean" if m == "attention" else m) in ds]


def convergence_table(ds, gaps: pd.DataFrame | None = None) -> pd.DataFrame:
    """Completeness errors of integrated-gradients methods per (method, hemi, ROI).

    ``delta`` is the sum of the attributions minus ``f(x) - f(baseline)``;
    the table gives its mean and largest absolute value over images and,
    where ``gaps`` (from :func:`completeness_gaps`) has the method, the mean
    ``|delta|`` relative to the mean ``|f(x) - f(baseline)|``.
    """
    rows = []
    for name in [v for v in ds.data_vars if str(v).endswith("_delta")]:
        method = str(name)[: -len("_delta")]
        delta = ds[name]
        for hemi in delta.hemi.values:
            for roi in delta.roi.values:
                d = np.abs(delta.sel(hemi=hemi, roi=roi).values)
                if not np.isfinite(d).any():
                    continue
                row = {"method": method, "hemi": str(hemi), "roi": str(roi), "mean_abs_delta": float(np.nanmean(d)),
                       "max_abs_delta": float(np.nanmax(d))}
                if gaps is not None:
                    g = gaps[(gaps.method == method) & (gaps.hemi == hemi) & (gaps.roi == roi)]
                    if len(g):
                        row["relative_delta"] = float(np.nanmean(d) / max(np.abs(g.gap.values).mean(), 1e-12))
                rows.append(row)
    return pd.DataFrame(rows)


def completeness_gaps(run, inputs, rois: list[str] | None, methods: list[str], baseline: str) -> pd.DataFrame:
    """``f(x) - f(baseline)`` per image and target, for the pixel-level integrated-gradients methods."""
    import torch

    from interpret.attribution import ImageModel, baseline_images, method
    from interpret.maps import roi_targets

    pixel = [m for m in methods if m != "attention" and method(m)[0].convergence_delta and method(m)[0].level == "pixel"]
    if not pixel:
        return pd.DataFrame(columns=["method", "hemi", "roi", "image", "gap"])
    targets = roi_targets(run, rois)
    model = ImageModel(inputs.backbone, run.model, targets).eval()
    with torch.no_grad():
        gap = (model(inputs.images) - model(baseline_images(inputs.images, baseline, inputs.backbone))).numpy()
    rows = [{"method": m, "hemi": h, "roi": r, "image": i, "gap": float(gap[i, t])}
            for m in pixel for t, (h, r) in enumerate(zip(targets.hemis, targets.rois)) for i in range(len(gap))]
    return pd.DataFrame(rows)


def method_agreement(ds, variables: list[str]) -> pd.DataFrame:
    """Mean Spearman rank correlation between the methods' maps (over images, hemispheres and ROIs).

    Maps are compared by their absolute values (as in the sanity checks), so a
    signed method and an unsigned one agree when they highlight the same places.
    """
    from scipy.stats import spearmanr

    arrays = {}
    for name in variables:
        a = ds[name].mean("head") if "head" in ds[name].dims else ds[name]
        arrays[name] = np.abs(a.transpose("image", "hemi", "roi", "y", "x").values)
    out = pd.DataFrame(np.eye(len(variables)), index=variables, columns=variables)
    for i, a in enumerate(variables):
        for b in variables[i + 1:]:
            values = []
            for idx in np.ndindex(*arrays[a].shape[:3]):
                x, y = arrays[a][idx].ravel(), arrays[b][idx].ravel()
                if np.isfinite(x).all() and np.isfinite(y).all() and x.std() > 0 and y.std() > 0:
                    values.append(spearmanr(x, y)[0])
            out.loc[a, b] = out.loc[b, a] = float(np.mean(values)) if values else np.nan
    return out


# --------------------------------------------------------------------------
# Map checks
# --------------------------------------------------------------------------

#: The tables of the map checks, as ``tbe check-maps`` writes them
CHECK_TABLES = ("sanity", "localization", "faithfulness")


def read_check_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """The check tables (``<name>.csv``) of a ``tbe check-maps`` (or ``tbe demo``) output folder."""
    from model.errors import InputError

    folder = Path(folder)
    for name in ("sanity", "faithfulness"):
        if not (folder / f"{name}.csv").is_file():
            raise InputError(folder / f"{name}.csv", "missing: not a folder written by tbe check-maps")
    return {name: pd.read_csv(folder / f"{name}.csv") for name in CHECK_TABLES if (folder / f"{name}.csv").is_file()}


def sanity_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: rank correlation with the original maps after the whole decoder is randomised."""
    last = table[table.step == table.step.max()]
    return last[["method", "randomised", "rank_correlation", "ssim", "flagged"]].reset_index(drop=True)


def localization_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of each localization measure per method, with its chance level."""
    if table.empty:
        return table
    means = table.groupby(["measure", "method"])[["value", "chance"]].mean().reset_index()
    means["above_chance"] = [None if pd.isna(c) else bool(v > c) for v, c in zip(means.value, means.chance)]
    return means


def faithfulness_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean deletion and insertion AUCs per method, and their differences from the random order."""
    means = table.groupby("method")[["deletion_auc", "insertion_auc"]].mean()
    if "random" in means.index:
        means["deletion_vs_random"] = means.deletion_auc - means.loc["random", "deletion_auc"]
        means["insertion_vs_random"] = means.insertion_auc - means.loc["random", "insertion_auc"]
    return means.reset_index()


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------

def open_checked(run_dir: str | Path, data_dir: str | Path | None, subj: int):
    """:func:`model.run.open_run`, refusing a subject other than the run's."""
    from model.errors import InputError
    from model.run import open_run

    run = open_run(run_dir, data_dir or None)
    if run.config.subj != int(subj):
        raise InputError("subj", f"the run {run_dir} was trained on subject {run.config.subj}, not {subj}")
    return run


def map_job(run, split: str, n_images: int, methods: Any, rois: Any, n_steps: int | None = None,
            baseline: str | None = None):
    """An :class:`interpret.pipeline.MapJob` from notebook parameters, checked against the run before any work.

    Unknown methods or ROI names stop here, before images are read.
    """
    from interpret.attribution import Settings
    from interpret.maps import roi_targets
    from interpret.pipeline import MapJob

    wanted = as_list(rois)
    settings = {k: v for k, v in (("n_steps", n_steps), ("baseline", baseline)) if v is not None}
    job = MapJob(split, int(n_images), tuple(as_list(methods) or ()), tuple(wanted) if wanted else None,
                 settings=Settings(**settings), backbone_attention=False)
    job.check(run)
    roi_targets(run, wanted)
    return job


# --------------------------------------------------------------------------
# Expected visual-field quadrants (retinotopy of early visual cortex)
# --------------------------------------------------------------------------

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
    """Mark whether each early visual ROI's attention centre lies in the quadrant it represents."""
    centres = centres.copy()
    hits = []
    for row in centres.itertuples():
        q = expected_quadrant(row.hemi, row.roi)
        hits.append(np.nan if q is None else float(np.sign(row.x_deg) == q[0] and np.sign(row.y_deg) == q[1]))
    centres["in_expected_quadrant"] = hits
    return centres


# --------------------------------------------------------------------------
# One-line summaries
# --------------------------------------------------------------------------

def accuracy_summary(models: list, challenge: dict[str, float], difference: pd.DataFrame | None) -> str:
    """E.g. 'challenge score 54.1 (ridge 38.2); mean test r 0.31 (ridge 0.22); transformer higher in 18 of 25 ROIs'."""
    first, others = models[0], models[1:]

    def mean_r(m) -> float:
        return float(np.nanmean(np.concatenate([m.r[h] for h in m.r])))

    parts = []
    if challenge:
        parts.append(f"challenge score {challenge[first.name]:.1f}"
                     + "".join(f" ({o.name} {challenge[o.name]:.1f})" for o in others if o.name in challenge))
    parts.append(f"mean {first.split} r {mean_r(first):.3f}" + "".join(f" ({o.name} {mean_r(o):.3f})" for o in others))
    if difference is not None and len(difference):
        d = difference[difference.roi != "all"]
        better = int((d.difference > 0).sum())
        sure = int(((d.difference > 0) & d.excludes_zero).sum())
        parts.append(f"{first.name} higher in {better} of {len(d)} ROIs ({sure} with the bootstrap interval above 0)")
    return "; ".join(parts)


def attention_summary(centres: pd.DataFrame, n_images: int) -> str:
    """E.g. '16 ROI queries over 4 images; 12 of 14 early visual queries centred in their quadrant; focus 0.21'."""
    parts = [f"{len(centres)} ROI queries over {n_images} images"]
    if "in_expected_quadrant" in centres and centres.in_expected_quadrant.notna().any():
        q = centres.in_expected_quadrant.dropna()
        parts.append(f"{int(q.sum())} of {len(q)} early visual queries centred in the visual-field quadrant they represent")
    parts.append(f"mean focus {centres.focus.mean():.2f} (0 = uniform, 1 = one cell)")
    return "; ".join(parts)


def attribution_summary(variables: list[str], convergence: pd.DataFrame, agreement: pd.DataFrame, n_images: int) -> str:
    """E.g. 'integrated gradients, saliency over 2 images; completeness error 1.2% of f(x) - f(baseline); ...'."""
    parts = [f"{', '.join(v.replace('_', ' ') for v in variables)} over {n_images} images"]
    if len(convergence):
        if "relative_delta" in convergence and convergence.relative_delta.notna().any():
            parts.append(f"integrated-gradients completeness error {100 * convergence.relative_delta.mean():.1f}% "
                         "of f(x) - f(baseline) on average")
        else:
            parts.append(f"integrated-gradients completeness error |delta| {convergence.mean_abs_delta.mean():.2g} on average")
    if len(agreement) > 1:
        off = agreement.values[~np.eye(len(agreement), dtype=bool)]
        parts.append(f"mean rank agreement between methods {np.nanmean(off):.2f}")
    return "; ".join(parts)


def checks_summary(tables: dict[str, pd.DataFrame]) -> str:
    """Flagged methods (sanity), the best localization, and the most faithful method."""
    parts = []
    sanity = tables.get("sanity")
    if sanity is not None and len(sanity):
        flagged = sorted(set(sanity.loc[sanity.flagged, "method"]))
        parts.append("sanity: " + (f"flagged {', '.join(flagged)}" if flagged else "no method flagged"))
    loc = tables.get("localization")
    if loc is not None and len(loc):
        for measure in ("same_quadrant", "pointing_game"):
            rows = loc[loc.measure == measure]
            if len(rows):
                means = rows.groupby("method")[["value", "chance"]].mean()
                best = means.value.idxmax()
                parts.append(f"{measure.replace('_', ' ')} best {best} {means.value.max():.2f} "
                             f"(chance {means.loc[best, 'chance']:.2f})")
    elif loc is None:
        parts.append("localization: no ground truth")
    faith = tables.get("faithfulness")
    if faith is not None and len(faith):
        means = faith.groupby("method")["deletion_auc"].mean()
        methods = means.drop("random", errors="ignore")
        if len(methods):
            parts.append(f"most faithful (deletion AUC) {methods.idxmin()} {methods.min():.2f}"
                         + (f" vs random {means['random']:.2f}" if "random" in means else ""))
    return "; ".join(parts)


# --------------------------------------------------------------------------
# ROI selectivity
# --------------------------------------------------------------------------

#: Columns of the selectivity views, where the table has them
_SELECTIVITY_COLUMNS = ["source", "hemi", "roi", "category", "n", "d_prime", "ci_low", "ci_high", "p_fdr", "significant",
                        "planted", "r_heldout", "supported"]


def _roi_subset(table: pd.DataFrame, rois: list[str] | None) -> pd.DataFrame:
    return table if rois is None else table[table.roi.isin(rois)]


def expected_preferences(table: pd.DataFrame, rois: list[str] | None = None) -> pd.DataFrame:
    """The hypothesis tests proper: each category ROI against its expected category (FFA: faces, PPA: places ...)."""
    rows = _roi_subset(table[table.expected.astype(bool)], rois)
    return rows[[c for c in _SELECTIVITY_COLUMNS if c in rows]].reset_index(drop=True)


def preferred_categories(table: pd.DataFrame, rois: list[str] | None = None) -> pd.DataFrame:
    """Each ROI's preferred category (highest mean response), whether it is the expected one, and its test."""
    rows = _roi_subset(table[table.preferred.astype(bool)], rois).copy()
    expected = table[table.expected.astype(bool)].set_index(["source", "hemi", "roi"])["category"]
    rows["expected_category"] = [expected.get((s, h, r), "") for s, h, r in zip(rows.source, rows.hemi, rows.roi)]
    columns = ["source", "hemi", "roi", "category", "expected_category", "d_prime", "p_fdr", "significant", "planted",
               "supported"]
    return rows[[c for c in columns if c in rows]].rename(columns={"category": "preferred"}).reset_index(drop=True)


def selectivity_summary(table: pd.DataFrame, localizer: pd.DataFrame | None = None) -> str:
    """E.g. 'predicted: 8 of 10 category ROIs (per hemisphere) significantly prefer their expected category, ...'."""
    parts = []
    tests = table[table.expected.astype(bool)]
    for source, rows in tests.groupby("source", sort=False):
        text = (f"{source}: {int(rows.significant.astype(bool).sum())} of {len(rows)} category ROIs (per hemisphere) "
                f"significantly prefer their expected category")
        if source == "predicted" and "supported" in rows:
            text += f", {int(rows.supported.astype(bool).sum())} of them reliably predicted"
        parts.append(text)
    if localizer is not None and len(localizer):
        ref = localizer[localizer.reference == "roi_masks"] if "reference" in localizer else localizer
        if len(ref):
            means = ref.groupby("contrast", sort=False)[["dice", "auc"]].mean()
            parts.append("localizer vs ROI masks: " + ", ".join(f"{c} Dice {m.dice:.2f} AUC {m.auc:.2f}"
                                                                for c, m in means.iterrows()))
    return "; ".join(parts)
