"""Figures. Each takes the rows a stage already saved (so a figure can be redrawn from its
cached data) and writes PNG and PDF atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from langsae.artifacts import atomic_path  # noqa: E402


def save_figure(fig, stem: Path) -> list[Path]:
    """stem.png and stem.pdf, each written atomically."""
    paths = []
    for fmt in ("png", "pdf"):
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _grid(n: int, ncols: int = 5, size: tuple[float, float] = (3.2, 2.6)):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows + 0.8), squeeze=False, sharex=True, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("layer", fontsize=7)
    return fig, list(axes.flat[:n])


def _finish(fig, axes, title: str) -> None:
    axes[0].set_ylabel("ΔCE (nats)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)


def _line(ax, rows: list[dict], label: str, **style) -> None:
    rows = sorted(rows, key=lambda r: r["layer"])
    if not rows:
        return
    x = [r["layer"] for r in rows]
    ax.plot(x, [r["delta_ce"] for r in rows], label=label, marker="o" if len(x) == 1 else None, ms=3, **style)
    ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.15, color=style.get("color"), lw=0)


def _select(rows: Sequence[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _mark_peak(ax, peaks: Mapping[str, int] | None, lang: str) -> None:
    """A thin vertical line at the language's held-out peak layer (chosen on half A of the sentences)."""
    if peaks and lang in peaks:
        ax.axvline(int(peaks[lang]), color="black", lw=0.6, ls=(0, (1, 2)), label="held-out peak layer")


def figure5(rows: Sequence[dict], languages: Sequence[str], stem: Path, mode: str, peaks: Mapping[str, int] | None = None) -> list[Path]:
    """ΔCE on the language itself vs the mean over the others, across layers, for top-1 and
    top-1..k, with 95% bands (joint bootstrap over sentences); controls dotted (random features,
    band over draws and sentences; other languages' features). peaks: language -> held-out peak layer."""
    fig, axes = _grid(len(languages))
    sets = list(dict.fromkeys(r["features"] for r in rows))
    colours = dict(zip(sets, ["tab:blue", "tab:red", "tab:purple"]))
    for ax, lang in zip(axes, languages):
        for fs in sets:
            c = colours[fs]
            _line(ax, _select(rows, language=lang, features=fs, series="self"), f"{fs} self", color=c, ls="-")
            _line(ax, _select(rows, language=lang, features=fs, series="others"), f"{fs} others", color=c, ls="--")
        last = sets[-1]
        _line(ax, _select(rows, language=lang, features=last, series="random"), "random, same k (control)", color="grey", ls=":")
        _line(ax, _select(rows, language=lang, features=last, series="other_lang_features"), f"other languages' {last} (control)", color="tab:green", ls=":")
        _mark_peak(ax, peaks, lang)
        ax.set_title(f"ablate {lang}'s features", fontsize=9)
    _finish(fig, axes, f"Figure 5 ({mode} ablation): ΔCE on the language's own texts (self) vs mean over the other languages, 95% CI (sentences resampled jointly)")
    return save_figure(fig, stem)


def figure6(rows: Sequence[dict], languages: Sequence[str], stem: Path, mode: str, peaks: Mapping[str, int] | None = None) -> list[Path]:
    """Top-1, top-2, top-1+2 (and synergy = Δ(1+2) − Δ(1) − Δ(2)) per language across layers,
    on its own texts (solid) and on the other languages (dashed), 95% joint-bootstrap bands.
    peaks: language -> held-out peak layer."""
    fig, axes = _grid(len(languages))
    quantities = list(dict.fromkeys(r["quantity"] for r in rows))
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    colours = {q: ("black" if q == "synergy" else palette[i % len(palette)]) for i, q in enumerate(quantities)}
    for ax, lang in zip(axes, languages):
        for q in quantities:
            for where, ls in (("self", "-"), ("others", "--")):
                _line(ax, _select(rows, language=lang, quantity=q, eval=where), f"{q} {where}", color=colours[q], ls=ls)
        _mark_peak(ax, peaks, lang)
        ax.set_title(f"ablate {lang}'s features", fontsize=9)
    _finish(fig, axes, f"Figure 6 ({mode} ablation): single vs joint top features; synergy = Δ(joint) − ΣΔ(single), 95% CI")
    return save_figure(fig, stem)


DOWNSTREAM_SERIES = {"baseline": ("black", "o"), "own": ("tab:red", "v"), "random": ("grey", "s"), "cross": ("tab:green", "D")}


def downstream_figure(rows: Sequence[dict], task: str, layer: int, stem: Path) -> list[Path]:
    """One panel per metric of a task at one layer: per language, the baseline and the values under
    ablation of the language's own top-1+2, of random features (mean over draws, CI over draws and
    items) and of another language's top-1+2 (cross-language control), with 95% bootstrap CIs.
    rows: the task's rows of downstream_results.csv (quantity "value" is used)."""
    def keep(r):
        return r["quantity"] == "value" and r["draw"] == "" and (r["condition"] == "baseline" or r["layer"] == layer)

    rows = [r for r in rows if keep(r)]
    panels = list(dict.fromkeys((r["metric"], r["scoring"]) for r in rows))
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.2, 0.6 * len(langs) + 1.2) * len(panels), 3.0), squeeze=False, layout="constrained")
    for ax, (metric, scoring) in zip(axes[0], panels):
        for s, (name, (colour, marker)) in enumerate(DOWNSTREAM_SERIES.items()):
            pts = {r["lang"]: r for r in _select(rows, metric=metric, scoring=scoring, condition=name)}
            xs = [i + (s - 1.5) * 0.15 for i, lang in enumerate(langs) if lang in pts]
            ys = [pts[lang]["value"] for lang in langs if lang in pts]
            lo = [pts[lang]["value"] - pts[lang]["ci_low"] for lang in langs if lang in pts]
            hi = [pts[lang]["ci_high"] - pts[lang]["value"] for lang in langs if lang in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=marker, color=colour, ms=4, lw=0.8, capsize=2, label=name)
        ax.set_xticks(range(len(langs)), [lang.split("_")[0] for lang in langs], fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{metric} ({scoring})", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"{task}, ablation at layer {layer}: baseline vs own top-1+2 vs random (same k) vs another language's top-1+2; 95% CI", fontsize=9)
    return save_figure(fig, stem)
