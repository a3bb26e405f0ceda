"""What the report notebooks show: notebook set-up, figures, one-line summaries and tables arranged for reading.

The notebooks in ``notebooks/`` stay thin: they call :mod:`model`,
:mod:`interpret` and :mod:`analyses` for every number, and this module for
showing them (figures as embedded PNG, one-line summaries the report index
picks up, tables arranged for reading). Nothing here computes a result that
is not on display: the analyses have their own modules and tests. Heavy
imports happen inside the functions, so :func:`setup_notebook` can quiet
warnings before any library that warns at import time is loaded.
"""
from __future__ import annotations

import logging
import random
import sys
import warnings
from pathlib import Path
from typing import Any

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
    _tables_as_html()
    if seed is not None:
        seed_everything(seed)


def _tables_as_html() -> None:
    """Every DataFrame the notebook displays is shown by :func:`table_html` (in a kernel; a no-op elsewhere)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the report extra
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, table_html)


def table_html(table: pd.DataFrame) -> str:
    """A table for reading: no index column, numbers formatted by their kind, NaN shown as blank.

    Each number reads as a paper's table prints it (:mod:`analyses.formatting`:
    r and d' with three decimals, p-values in e-notation only below 0.001,
    counts as integers); text is HTML-escaped. A meaningful index (named, or
    of labels such as method names) becomes an ordinary first column; a bare
    row number is dropped.
    """
    from .formatting import format_table

    if any(table.index.names) or not pd.api.types.is_integer_dtype(table.index):
        table = table.reset_index(names=[n or "" for n in table.index.names])
    return format_table(table).style.hide(axis="index").format(escape="html").to_html()


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

    from model.figures import png_bytes
    from model.files import atomic_path

    if isinstance(figure, (str, Path)):
        display(Image(filename=str(figure)))
        return
    data = png_bytes(figure)
    if save_as is not None:
        with atomic_path(save_as) as tmp:
            tmp.write_bytes(data)
    display(Image(data=data, format="png"))


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


def class_accuracy_figure(scores_table: pd.DataFrame, measure: str = "r"):
    """Mean r per ROI class (every vertex of the class) of each encoder side by side, one panel per hemisphere.

    ``scores_table``: :func:`analyses.accuracy.compare_scores` (rows
    (measure, group), columns (encoder, hemi)).
    """
    import matplotlib.pyplot as plt

    part = scores_table.loc[measure]
    encoders = list(dict.fromkeys(part.columns.get_level_values(0)))
    hemis = [h for h in dict.fromkeys(part.columns.get_level_values(1)) if h != "both"]
    groups = list(part.index)
    fig, axes = plt.subplots(1, len(hemis), figsize=(max(5, 0.9 * len(groups) + 1.5) * len(hemis) / 1.4, 3.2),
                             squeeze=False, sharey=True)
    width = 0.8 / max(1, len(encoders))
    x = np.arange(len(groups))
    for ax, hemi in zip(axes[0], hemis):
        for k, name in enumerate(encoders):
            ax.bar(x + (k - (len(encoders) - 1) / 2) * width, part[(name, hemi)].to_numpy(float), width=width, label=name)
        ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=8)
        ax.set_title(hemi, fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0, 0].set_ylabel(f"mean {measure} over the class's vertices")
    axes[0, 0].legend(fontsize=8, frameon=False)
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

def present_rois(ds, hemi: str, variable: str) -> list[str]:
    """ROIs of a maps dataset that have maps in ``hemi``."""
    arr = ds[variable].sel(hemi=hemi)
    return [str(r) for r in ds.roi.values if np.isfinite(arr.sel(roi=r).values).all()]


def _image_array(image) -> np.ndarray:
    return image.permute(1, 2, 0).numpy() if hasattr(image, "permute") else np.asarray(image)


#: Focus (0 = uniform, 1 = one cell) below which an attention map is called near uniform in words
NEAR_UNIFORM_FOCUS = 0.05


def _overlay(ax, img: np.ndarray, m: np.ndarray, scale=None, show_focus: bool = False) -> None:
    """A map over its image on ``scale`` (its own when None), with its focus written under it when asked."""
    from interpret.focus import focus
    from interpret.overlay import draw_map
    from model.figures import colour_scale

    if not np.isfinite(m).all():
        ax.imshow(img, alpha=0.3)
        ax.set_xticks([]), ax.set_yticks([])
        return
    draw_map(ax, img, m, scale or colour_scale(m))
    if show_focus:
        ax.set_xlabel(f"focus {float(focus(m)):.2f}", fontsize=7)


def _shared_scale(values, shared: bool):
    from model.figures import colour_scale

    finite = np.asarray(values, float)
    return colour_scale(finite[np.isfinite(finite)]) if shared else None


def _colour_bar(fig, axes, scale, label: str) -> None:
    from matplotlib.cm import ScalarMappable

    if scale is not None:
        fig.colorbar(ScalarMappable(scale.norm, scale.cmap), ax=axes.ravel().tolist(), shrink=0.6, label=label)


def near_uniform_note(ds, hemi: str, rois: list[str], variable: str = "attention_mean",
                      shared_scale: bool = False) -> str:
    """Words for maps close to uniform: 'maps are close to uniform (mean focus 0.01)...' or ''."""
    from interpret.focus import focus

    values = [focus(ds[variable].sel(hemi=hemi, roi=r).values).mean() for r in rois]
    mean = float(np.nanmean(values)) if values else float("nan")
    if not np.isfinite(mean) or mean >= NEAR_UNIFORM_FOCUS:
        return ""
    text = f"The {hemi} maps are close to uniform (mean focus {mean:.2f}, 0 = uniform)"
    if shared_scale:
        return text + ": on the shared colour scale they look as flat as they are."
    return (text + ": on a panel's own colour scale small differences look focal; with `shared_scale = True` they "
            "look as flat as they are.")


def attention_grid(ds, images, hemi: str, rois: list[str], variable: str = "attention_mean",
                   shared_scale: bool = False):
    """Rows: images; columns: the image, then each ROI query's attention over it, its focus under it.

    With ``shared_scale`` every panel uses one colour scale (shown by a
    colour bar), so near-uniform maps look uniform; otherwise each panel is
    scaled on its own, which shows the shape of even a nearly flat map.
    """
    import matplotlib.pyplot as plt

    n = len(ds.image)
    fig, axes = plt.subplots(n, len(rois) + 1, figsize=(1.9 * (len(rois) + 1), 2.1 * n), squeeze=False)
    scale = _shared_scale(ds[variable].sel(hemi=hemi, roi=rois).values, shared_scale)
    for i in range(n):
        img = _image_array(images[i])
        axes[i, 0].imshow(img)
        axes[i, 0].set_xticks([]), axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(str(ds.image.values[i])[:18], fontsize=7)
        for j, roi in enumerate(rois, start=1):
            _overlay(axes[i, j], img, ds[variable].sel(hemi=hemi, roi=roi).values[i], scale, show_focus=True)
            if i == 0:
                axes[i, j].set_title(f"{hemi} {roi}", fontsize=8)
    where = "one colour scale" if shared_scale else "each panel on its own colour scale"
    fig.suptitle(f"{variable.replace('_', ' ')} ({hemi}; {where})", fontsize=10)
    fig.tight_layout()
    _colour_bar(fig, axes, scale, "attention")
    return fig


def head_grid(ds, images, hemi: str, roi: str, shared_scale: bool = False):
    """Rows: images (labelled); columns: each attention head of one ROI query, its focus under it."""
    import matplotlib.pyplot as plt

    att = ds["attention"].sel(hemi=hemi, roi=roi)
    n, heads = len(ds.image), att.sizes["head"]
    fig, axes = plt.subplots(n, heads, figsize=(1.8 * heads, 2.0 * n), squeeze=False)
    scale = _shared_scale(att.values, shared_scale)
    for i in range(n):
        img = _image_array(images[i])
        for h in range(heads):
            _overlay(axes[i, h], img, att.isel(image=i, head=h).values, scale, show_focus=True)
            if i == 0:
                axes[i, h].set_title(f"head {h}", fontsize=8)
        axes[i, 0].set_ylabel(str(ds.image.values[i])[:18], fontsize=7)
    fig.suptitle(f"{hemi} {roi}: attention per head (rows: images)", fontsize=10)
    fig.tight_layout()
    _colour_bar(fig, axes, scale, "attention")
    return fig


def mean_map_grid(ds, hemi: str, rois: list[str], methods: list[str]):
    """Rows: ROIs; columns: methods; each map averaged over the images (signed maps diverging, centred on 0)."""
    import matplotlib.pyplot as plt
    from model.figures import colour_scale

    fig, axes = plt.subplots(len(rois), len(methods), figsize=(2.2 * len(methods), 2.0 * len(rois)), squeeze=False)
    for i, roi in enumerate(rois):
        for j, name in enumerate(methods):
            ax = axes[i, j]
            m = ds[name].sel(hemi=hemi, roi=roi)
            m = (m.mean("head") if "head" in m.dims else m).mean("image").values
            ax.set_xticks([]), ax.set_yticks([])
            if np.isfinite(m).all():
                shown = ax.imshow(m, **colour_scale(m).imshow_kwargs())
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            if i == 0:
                ax.set_title(name.replace("_", " "), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{hemi} {roi}", fontsize=8)
    fig.suptitle(f"maps averaged over images ({hemi}; red/blue: signed, centred on 0)", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------

def faithfulness_note(run, cache_dir: str | Path | None = None) -> None:
    """Say above any attention figure whether the run's predictions use its attention (:mod:`model.scoring.faithfulness`).

    The line ``tbe train`` logged (recomputed the same way for runs trained
    before the test existed); a run whose attention is not faithful gets it
    as a warning, naming the queries.
    """
    from interpret.attention_use import describe_run

    line = describe_run(run, cache_dir or None)
    if line:
        note(("**Warning.** " if "NOT FAITHFUL" in line else "") + line[0].upper() + line[1:] + ".")


def open_checked(run_dir: str | Path, data_dir: str | Path | None, subj: int, device: str = "cpu"):
    """:func:`model.runs.opening.open_run` on ``device`` (a notebook's ``device`` parameter), refusing a subject other than the run's."""
    from model.errors import InputError
    from model.runs import open_run

    run = open_run(run_dir, data_dir or None, device)
    if run.config.subj != int(subj):
        raise InputError("subj", f"the run {run_dir} was trained on subject {run.config.subj}, not {subj}")
    return run


# --------------------------------------------------------------------------
# One-line summaries
# --------------------------------------------------------------------------

def run_note(run_dir, config, metrics: dict) -> str:
    """What the encoding-accuracy report says about the run: its backbone and epochs, or an ensemble's two validation r."""
    if metrics.get("kind") == "ensemble":
        return (f"**Ensemble** `{run_dir}`: {metrics['n_members']} runs, {metrics['weighting']} weighting; validation r "
                f"{metrics['val_r']['mean']:.3f} cross-fitted (weights chosen on other validation images), "
                f"{metrics['val_r_in_sample']['mean']:.3f} in-sample (weights chosen on the images scored: flattering); "
                f"best member {metrics['best_member']}: {metrics['best_member_val_r']:.3f}.")
    return (f"**Run** `{run_dir}`: {metrics.get('backbone', '')}; best epoch {metrics.get('best_epoch')} "
            f"of {config.train.epochs}, validation r {metrics['val_r']['mean']:.3f}.")


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
    focus = float(centres.focus.mean())
    parts.append(f"mean focus {focus:.2f} (0 = uniform, 1 = one cell)"
                 + (": the maps are close to uniform, whatever their colours suggest" if focus < NEAR_UNIFORM_FOCUS else ""))
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


def stimulus_confounds_note(run, which: list[str] | None = None) -> str:
    """The known confounds of a virtual subject's stimuli (``which``: by name; None: all), as one paragraph.

    '' for real data, whose stimuli have no declared confounds: the text
    then says nothing rather than guessing.
    """
    truth = run.subject.truth
    if truth is None:
        return ""
    found = {k: v for k, v in truth.stimulus_confounds.items() if which is None or k in which}
    if not found:
        return ""
    return "**Known confounds of these stimuli.** " + " ".join(f"*{k}*: {v}." for k, v in found.items())


def settings_table(settings: dict) -> pd.DataFrame:
    """Settings as a two-column table (``setting``, ``value``), lists written out comma-separated."""
    def text(v: Any) -> str:
        return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return pd.DataFrame({"setting": list(settings), "value": [text(v) for v in settings.values()]})


def outside_unit_note(faithfulness: pd.DataFrame) -> str:
    """Which methods have deletion or insertion AUCs outside [0, 1] (per ROI and hemisphere), and why that happens."""
    cols = [c for c in ("deletion_auc", "insertion_auc") if c in faithfulness]
    if not cols or faithfulness.empty:
        return ""
    keys = [c for c in ("hemi", "roi", "method") if c in faithfulness]
    means = faithfulness.groupby(keys)[cols].mean().reset_index()
    outside = means[((means[cols] < 0) | (means[cols] > 1)).any(axis=1)]
    if outside.empty:
        return "Every deletion and insertion AUC lies in [0, 1]."
    where = "; ".join(f"{r.method} ({' '.join(str(getattr(r, k)) for k in keys if k != 'method')}: "
                      + ", ".join(f"{c.split('_')[0]} {getattr(r, c):.2f}" for c in cols) + ")"
                      for r in outside.itertuples())
    return (f"AUCs outside [0, 1] for {', '.join(sorted(set(outside.method)))}: {where}. Deleting first the patches "
            "that raise the response leaves those that lower it, so a curve can dip below the blurred image's "
            "prediction (or rise above the intact one); any method can do this, not only token IG.")


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

def _roi_subset(table: pd.DataFrame, rois: list[str] | None) -> pd.DataFrame:
    return table if rois is None else table[table.roi.isin(rois)]


def expected_preferences(table: pd.DataFrame, rois: list[str] | None = None) -> pd.DataFrame:
    """The hypothesis tests proper: each category ROI against its expected category (FFA: faces, PPA: places ...)."""
    from .selectivity_columns import names

    rows = _roi_subset(table[table.expected.astype(bool)], rois)
    rows = rows[[c for c in names(shown=True) if c in rows]]  # the registry's columns of the report's tables
    return rows.assign(group=roi_group(rows) if len(rows) else []).reset_index(drop=True)


def preferred_categories(table: pd.DataFrame, rois: list[str] | None = None) -> pd.DataFrame:
    """Each ROI's preferred category (highest mean response), whether it is the expected one, and its test."""
    rows = _roi_subset(table[table.preferred.astype(bool)], rois).copy()
    expected = table[table.expected.astype(bool)].set_index(["source", "hemi", "roi"])["category"]
    rows["expected_category"] = [expected.get((s, h, r), "") for s, h, r in zip(rows.source, rows.hemi, rows.roi)]
    columns = ["source", "hemi", "roi", "category", "expected_category", "d_prime", "p_fdr", "significant", "planted",
               "supported"]
    return rows[[c for c in columns if c in rows]].rename(columns={"category": "preferred"}).reset_index(drop=True)


def roi_group(table: pd.DataFrame) -> pd.Series:
    """Which group each row's ROI counts in: planted vs null ROIs (virtual subjects), reliable vs the rest (real data).

    A virtual subject's null ROIs are pure noise: counting them with the
    planted ones would mix false positives into the successes. On real data
    the split is the run's held-out reliability of the ROI (predicted rows);
    measured rows have no split (``all``).
    """
    planted = table["planted"].fillna("").astype(str) if "planted" in table else pd.Series("", index=table.index)
    reliable = table["reliable"] if "reliable" in table else pd.Series(pd.NA, index=table.index)
    by_reliability = np.where(reliable.isna(), "all", np.where(reliable.fillna(False).astype(bool),
                                                               "reliably predicted", "not reliably predicted"))
    return pd.Series(np.where(planted == "none", "null (pure noise)",
                              np.where(planted != "", "planted", by_reliability)), index=table.index, name="group")


def preference_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per source and ROI group (:func:`roi_group`): how many category ROIs significantly prefer their expected category."""
    tests = table[table.expected.astype(bool)]
    counts = (tests.assign(group=roi_group(tests), significant=tests.significant.astype(bool))
              .groupby(["source", "group"], sort=False).significant.agg(n_significant="sum", n_rois="size").reset_index())
    return counts.astype({"n_significant": int, "n_rois": int})


def selectivity_summary(table: pd.DataFrame, localizer: pd.DataFrame | None = None,
                        localizer_settings: str = "", localizer_verdicts: pd.DataFrame | None = None) -> str:
    """E.g. 'predicted: planted ROIs 24 of 24 (per hemisphere) significantly prefer their expected category; null ...'.

    Null ROIs (pure noise) are counted apart from the planted ones: a
    significant null ROI is a false positive, not a success.
    """
    parts = []
    counts = preference_counts(table)
    tests = table[table.expected.astype(bool)]
    for source, rows in counts.groupby("source", sort=False):
        groups = ", ".join(f"{g} ROIs {r.n_significant} of {r.n_rois}" for g, r in zip(rows.group, rows.itertuples()))
        text = f"{source}: {groups} (per hemisphere) significantly prefer their expected category"
        supported = tests[(tests.source == source) & (roi_group(tests) != "null (pure noise)")]
        if source == "predicted" and "supported" in supported and set(rows.group) & {"planted"}:
            text += (f"; {int(supported.supported.astype(bool).sum())} of the planted ones supported (significant and "
                     "reliably predicted)")
        parts.append(text)
    if localizer is not None and len(localizer):
        ref = localizer[localizer.reference == "roi_masks"] if "reference" in localizer else localizer
        if len(ref):
            means = ref.groupby("contrast", sort=False)[["dice", "auc"]].mean()
            parts.append("localizer vs ROI masks" + (f" ({localizer_settings})" if localizer_settings else "") + ": "
                         + ", ".join(f"{c} Dice {m.dice:.2f} AUC {m.auc:.2f}" for c, m in means.iterrows()))
    if localizer_verdicts is not None and len(localizer_verdicts):
        failed = localizer_verdicts[localizer_verdicts.verdict == "failed"]
        parts.append("localizer failures: " + ("; ".join(f"{r.contrast} {r.hemi} (Dice {r.dice:.2f} vs {r.reference}: "
                                                          f"{r.reason})" for r in failed.itertuples())
                                                if len(failed) else "none"))
    return "; ".join(parts)
