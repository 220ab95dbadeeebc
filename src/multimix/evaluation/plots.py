"""Figures of the evaluation: reliability diagrams, embedding scatter plots, and PNG output helpers.

matplotlib is optional and imported lazily, only when a figure is drawn:
:func:`matplotlib_available` tells a caller beforehand whether plotting will
work, so it can skip (or fail) before long work rather than after it. Every
function draws on a bare ``matplotlib.figure.Figure`` and writes PNGs through
an Agg canvas, so none needs a display or changes pyplot's global backend or
state. Arguments are checked before any work is done.

Notation: N examples, c classes, d embedding channels.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from ..checks import brief, check_choice, check_generator, check_path
from .calibration import ece_from_bins, reliability_bins
from .geometry import PROJECTIONS, project_2d, random_subset
from .inputs import check_embeddings, check_labels, check_max_points

__all__ = ["matplotlib_available", "new_figure", "save_figure", "plot_reliability_diagram", "plot_embeddings"]

PathLike = Union[str, "os.PathLike[str]"]


def _matplotlib():
    """(Figure, colormaps) from matplotlib, imported lazily; no pyplot, no global backend switch."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'multimix[plots]' (or pip install matplotlib)") from err
    return Figure, matplotlib.colormaps


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported, i.e. whether the functions of this module can draw."""
    try:
        _matplotlib()
    except ImportError:
        return False
    return True


def _save(fig, path: Path, dpi: Optional[int] = None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)  # attach an Agg canvas: no display, pyplot's backend untouched
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def new_figure(**kwargs):
    """A bare ``matplotlib.figure.Figure`` (no pyplot state); raises ImportError without matplotlib."""
    Figure, _ = _matplotlib()
    return Figure(**kwargs)


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG through an Agg canvas (no display, pyplot's backend untouched)."""
    return _save(fig, path, dpi)


def _check_title(title) -> None:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")


def plot_reliability_diagram(
    probs: Tensor,
    labels: Tensor,
    path: PathLike,
    *,
    n_bins: int = 15,
    title: Optional[str] = None,
) -> Path:
    """Save a reliability diagram (PNG): accuracy per confidence bin against the diagonal.

    Bars show the accuracy of each bin of
    :func:`~multimix.evaluation.calibration.reliability_bins`; the gap to the
    bin's mean confidence is drawn hatched on top, the diagonal is perfect
    calibration, and the ECE (in %) is in the legend. A lower panel shows the
    share of examples per bin.

    Args:
        probs: (N, c) class probabilities, rows on the simplex.
        labels: (N,) integer true classes.
        path: where to write the PNG; parent folders are created.
        n_bins: number of confidence bins, ≥ 1.
        title: figure title (default: "Reliability diagram").

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    path = check_path(path)
    _check_title(title)
    bins = reliability_bins(probs, labels, n_bins)
    ece = ece_from_bins(bins)

    Figure, _ = _matplotlib()
    edges = bins["edges"].double().cpu()
    centres = ((edges[1:] + edges[:-1]) / 2).numpy()
    width = float(edges[1] - edges[0])
    count = bins["count"].cpu()
    occupied = (count > 0).numpy()
    acc = bins["accuracy"].double().cpu().nan_to_num(0.0).numpy()
    conf = bins["confidence"].double().cpu().nan_to_num(0.0).numpy()
    share = (count.double() / count.sum()).numpy()

    fig = Figure(figsize=(5.0, 6.0), dpi=120)
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    ax.bar(centres[occupied], acc[occupied], width=width, color="#4477aa", edgecolor="black", linewidth=0.6,
           label=f"accuracy (ECE = {100 * ece:.2f}%)")
    gap_lo = [min(a, c) for a, c in zip(acc[occupied], conf[occupied])]
    gap_h = [abs(a - c) for a, c in zip(acc[occupied], conf[occupied])]
    ax.bar(centres[occupied], gap_h, bottom=gap_lo, width=width, color="#ee6677", alpha=0.35,
           edgecolor="#cc3311", hatch="//", linewidth=0.6, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title or 'Reliability diagram'}\nECE = {100 * ece:.2f}% ({n_bins} bins)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    ax_count.bar(centres, share, width=width, color="#bbbbbb", edgecolor="black", linewidth=0.6)
    ax_count.set_xlabel("confidence")
    ax_count.set_ylabel("share of examples")
    ax_count.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_embeddings(
    panels: Mapping[str, Tuple[Tensor, Tensor]],
    path: PathLike,
    *,
    method: str = "pca",
    title: Optional[str] = None,
    max_points: Optional[int] = 4096,
    generator: Optional[torch.Generator] = None,
) -> Path:
    """Save a PNG with one 2-D scatter panel of embeddings per entry, coloured by class.

    Each panel is projected separately with
    :func:`~multimix.evaluation.geometry.project_2d`; colours come from the
    tab10 colormap (class k gets colour k mod 10, so classes ≥ 10 reuse
    colours); a class legend is shown when there are at most 10 classes.

    Args:
        panels: panel title → (z, labels), z of shape (N, d) and labels (N,)
            integer classes (N may differ between panels). Drawn in order,
            up to 4 per row.
        path: where to write the PNG; parent folders are created.
        method: ``"pca"`` or ``"tsne"``, see ``project_2d``.
        title: figure title (the method's name when ``None``).
        max_points: plot a uniformly random subset of at most this many points
            per panel (≥ 2); ``None`` plots all (t-SNE is slow beyond a few
            thousand points).
        generator: draws the subsets and seeds t-SNE; ``None`` uses a fresh
            generator seeded with 0.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    path = check_path(path)
    if not isinstance(panels, Mapping) or len(panels) == 0:
        raise ValueError("panels must be a non-empty dict mapping a panel title to (z, labels)")
    check_choice(method, "method", PROJECTIONS)
    _check_title(title)
    max_points = check_max_points(max_points)
    check_generator(generator)
    for name, item in panels.items():
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"panels[{brief(name, 40)}] must be a pair (z, labels), got {type(item).__name__}")
        z = check_embeddings(item[0], name=f"panels[{brief(name, 40)}][0] (z)", min_points=4 if method == "tsne" else 2)
        if z.shape[1] < 2:
            raise ValueError(f"panels[{brief(name, 40)}][0] (z) must have at least 2 feature dims, got {tuple(z.shape)}")
        check_labels(item[1], z.shape[0], name=f"panels[{brief(name, 40)}][1] (labels)")

    # one generator shared by every panel's subset and t-SNE seed, so the figure is reproducible as a whole
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    Figure, colormaps = _matplotlib()
    cmap = colormaps["tab10"]
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 4.0 * nrows + 0.4), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, (z, labels)) in zip(axes, panels.items()):
        idx = random_subset(z.shape[0], max_points, generator, z.device)
        if idx is not None:
            z, labels = z[idx], labels[idx.to(labels.device)]
        xy = project_2d(z, method, generator=generator).double().cpu().numpy()
        lab = labels.cpu().long()
        classes = torch.unique(lab).tolist()
        for k in classes:
            sel = (lab == k).numpy()
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, color=cmap(k % 10), linewidths=0, label=str(k))
        ax.set_title(str(name))
        ax.set_xticks([])
        ax.set_yticks([])
        if len(classes) <= 10:
            ax.legend(title="class", fontsize="x-small", title_fontsize="x-small", markerscale=2, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    title = title if title is not None else f"Embeddings ({'PCA' if method == 'pca' else 't-SNE'})"
    fig.suptitle(textwrap.fill(title, 40 * ncols))  # about 40 characters fit over a 4-inch panel
    fig.tight_layout()
    return _save(fig, path)
