"""Matplotlib figures for probes and sweeps (Agg backend: works headless).

Every function takes rows or probe results, writes one PNG to `path` and returns the path.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_lines(rows: Sequence[dict], x: str, y: str, path, group: str | None = None,
               logx: bool = False, title: str | None = None, ylim=None,
               vline: float | None = None) -> pathlib.Path:
    """One line per value of `group` (or a single line) of `y` against `x`, points sorted by x.

    String x values are categories, spaced evenly in first-seen order. Rows missing x or y (or
    with non-finite values) are skipped.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    categorical = any(isinstance(r.get(x), str) for r in rows)
    cats: list = []
    if categorical:  # string x values (e.g. decay kinds): evenly spaced, in first-seen order
        cats = list(dict.fromkeys(r[x] for r in rows if r.get(x) is not None))
        logx = False
    groups: dict = {}
    for r in rows:
        xv = cats.index(r[x]) if categorical and r.get(x) in cats else r.get(x)
        if _finite(xv) and _finite(r.get(y)):
            groups.setdefault(r.get(group) if group else None, []).append((xv, r[y]))
    for key in sorted(groups, key=str):
        pts = sorted(groups[key])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=str(key) if group else None)
    if categorical:
        ax.set_xticks(range(len(cats)), [str(c) for c in cats])
    if logx:
        ax.set_xscale("log", base=2 if x in ("factor", "seq_len", "num_kv_pairs") else 10)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", linewidth=1)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if group and groups:
        ax.legend(title=group, fontsize=8)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_heatmap(rows: Sequence[dict], x: str, y: str, value: str, path,
                 title: str | None = None) -> pathlib.Path:
    """A heatmap of `value` over the grid of `x` (columns) and `y` (rows), e.g. passkey
    accuracy over length x depth."""
    xs = sorted({r[x] for r in rows})
    ys = sorted({r[y] for r in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        grid[ys.index(r[y]), xs.index(r[x])] = r[value]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(xs), 1.2 + 0.5 * len(ys)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, label=value)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_decay(stats: dict, path, title: str | None = None) -> pathlib.Path:
    """Box plots of the half-life (tokens, log scale) per head, one panel per layer with decay
    (from `research.probes.decay_statistics`)."""
    layers = [layer for layer in stats["layers"] if layer.get("half_lives") is not None]
    n = max(len(layers), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.5, 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        hl = np.asarray(layer["half_lives"], dtype=np.float64)
        data = [np.clip(h[np.isfinite(h)], 1e-2, 1e12) for h in hl]
        ax.boxplot(data, whis=(5, 95), showfliers=False)
        ax.set_yscale("log")
        ax.set_xlabel("head")
        ax.set_title(f"layer {layer['layer']} ({layer['mixer']}, {layer['kind']})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("half-life (tokens)")
    if not layers:
        axes[0][0].text(0.5, 0.5, "no layer with a data-dependent or fixed decay",
                        ha="center", va="center", transform=axes[0][0].transAxes)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_state_norms(result: dict, path, train_len: int | None = None,
                     title: str | None = None) -> pathlib.Path:
    """State norm per head against position, one panel per recurrent layer (from
    `research.probes.state_norms`); a dashed line marks the training length."""
    layers = result["layers"]
    n = max(len(layers), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n + 0.5, 3.2), squeeze=False)
    pos = np.asarray(result["positions"])
    for ax, layer in zip(axes[0], layers):
        norm = np.asarray(layer["norm"])
        for h in range(norm.shape[1]):
            ax.plot(pos, norm[:, h], label=f"head {h}")
        if train_len:
            ax.axvline(train_len, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("position")
        ax.set_title(f"layer {layer['layer']} ({layer['mixer']})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("state norm")
    if layers and np.asarray(layers[0]["norm"]).shape[1] <= 8:
        axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
