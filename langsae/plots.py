"""Figures. Each takes the rows a stage already saved (so a figure can be redrawn from its
cached data) and writes PNG and PDF atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import AutoLocator, MaxNLocator  # noqa: E402

from langsae.artifacts import atomic_path  # noqa: E402
from langsae.data import SIB_CATEGORIES  # noqa: E402


def text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with a cell of this colour: black above a relative
    luminance (WCAG 2) of 0.179, where the two contrast ratios are equal, so no value is unreadable."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def annotate_cells(ax, im, labels: Sequence[Sequence[str]], fontsize: float = 5) -> None:
    """Write labels[i][j] on cell (i, j) of the image `im`, in the colour that reads on that cell."""
    values = np.asarray(im.get_array())
    for i, row in enumerate(labels):
        for j, text in enumerate(row):
            colour = text_colour(im.cmap(im.norm(values[i, j]))) if np.isfinite(values[i, j]) else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)


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
        nrows,
        ncols,
        figsize=(size[0] * ncols, size[1] * nrows + 0.8),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("layer", fontsize=7)
    return fig, list(axes.flat[:n])


def _finish(fig, axes, title: str, ylabel: str = "ΔCE (nats)") -> None:
    for ax in axes:  # every panel: each has its own y scale
        ax.set_ylabel(ylabel, fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False
    )
    fig.suptitle(title, fontsize=10)


def _line(ax, rows: list[dict], label: str, y: str = "delta_ce", **style) -> None:
    rows = sorted(rows, key=lambda r: r["layer"])
    if not rows:
        return
    x = [r["layer"] for r in rows]
    ax.plot(x, [r[y] for r in rows], label=label, marker="o" if len(x) == 1 else None, ms=3, **style)
    ax.fill_between(
        x,
        [r["ci_low"] for r in rows],
        [r["ci_high"] for r in rows],
        alpha=0.15,
        color=style.get("color"),
        lw=0,
    )


def _select(rows: Sequence[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _mark_peak(ax, peaks: Mapping[str, int] | None, lang: str) -> None:
    """A thin vertical line at the language's held-out peak layer (chosen on half A of the sentences)."""
    if peaks and lang in peaks:
        ax.axvline(int(peaks[lang]), color="black", lw=0.6, ls=(0, (1, 2)), label="held-out peak layer")


def figure5(
    rows: Sequence[dict],
    languages: Sequence[str],
    stem: Path,
    mode: str,
    peaks: Mapping[str, int] | None = None,
) -> list[Path]:
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
            _line(
                ax,
                _select(rows, language=lang, features=fs, series="others"),
                f"{fs} others",
                color=c,
                ls="--",
            )
        last = sets[-1]
        _line(
            ax,
            _select(rows, language=lang, features=last, series="random"),
            "random, same k (control)",
            color="grey",
            ls=":",
        )
        _line(
            ax,
            _select(rows, language=lang, features=last, series="other_lang_features"),
            f"other languages' {last} (control)",
            color="tab:green",
            ls=":",
        )
        _mark_peak(ax, peaks, lang)
        ax.set_title(f"ablate {lang}'s features", fontsize=9)
    _finish(
        fig,
        axes,
        f"Figure 5 ({mode} ablation): ΔCE on the language's own texts (self) vs mean over the other "
        "languages, 95% CI (sentences resampled jointly)",
    )
    return save_figure(fig, stem)


def figure6(
    rows: Sequence[dict],
    languages: Sequence[str],
    stem: Path,
    mode: str,
    peaks: Mapping[str, int] | None = None,
) -> list[Path]:
    """Top-1, top-2, top-1+2 (and synergy = Δ(1+2) − Δ(1) − Δ(2)) per language across layers,
    on its own texts (solid) and on the other languages (dashed), 95% joint-bootstrap bands.
    peaks: language -> held-out peak layer."""
    fig, axes = _grid(len(languages))
    quantities = list(dict.fromkeys(r["quantity"] for r in rows))
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    colours = {
        q: ("black" if q == "synergy" else palette[i % len(palette)]) for i, q in enumerate(quantities)
    }
    for ax, lang in zip(axes, languages):
        for q in quantities:
            for where, ls in (("self", "-"), ("others", "--")):
                _line(
                    ax,
                    _select(rows, language=lang, quantity=q, eval=where),
                    f"{q} {where}",
                    color=colours[q],
                    ls=ls,
                )
        _mark_peak(ax, peaks, lang)
        ax.set_title(f"ablate {lang}'s features", fontsize=9)
    _finish(
        fig,
        axes,
        f"Figure 6 ({mode} ablation): single vs joint top features; synergy = Δ(joint) − ΣΔ(single), 95% CI",
    )
    return save_figure(fig, stem)


CODE_SWITCH_TITLES = {
    "prefix_feature": "the prefix language's feature on the noun's tokens",
    "noun_feature": "the noun language's own feature on its noun",
}


def code_switching_lines(
    rows: Sequence[dict], languages: Sequence[str], measure: str, cases: Sequence[str], stem: Path
) -> list[Path]:
    """One panel per language: each case of `measure` across layers, 95% bands over items.
    rows: code_switching_results.csv rows (value, ci_low, ci_high per layer, case, language)."""
    fig, axes = _grid(len(languages))
    palette = ["tab:blue", "tab:red", "tab:green", "tab:grey"]
    for ax, lang in zip(axes, languages):
        for case, c in zip(cases, palette):
            _line(
                ax,
                _select(rows, measure=measure, case=case, language=lang),
                case.replace("_", " "),
                y="value",
                color=c,
            )
        ax.set_title(lang, fontsize=9)
    axes[0].set_ylabel("mean activation on noun tokens")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False
    )
    fig.suptitle(f"Code-switching: {CODE_SWITCH_TITLES[measure]}, per layer (95% CI over items)", fontsize=10)
    return save_figure(fig, stem)


def code_switching_heatmap(
    rows: Sequence[dict], languages: Sequence[str], layer: int, stem: Path
) -> list[Path]:
    """Prefix language (rows) x noun language (columns) at one layer, one panel per measure."""
    measures = list(dict.fromkeys(r["measure"] for r in rows))
    fig, axes = plt.subplots(
        1, len(measures), figsize=(5.2 * len(measures), 4.6), squeeze=False, layout="constrained"
    )
    idx = {lang: i for i, lang in enumerate(languages)}
    for ax, measure in zip(axes[0], measures):
        mat = np.full((len(languages), len(languages)), np.nan)
        for r in _select(rows, measure=measure):
            mat[idx[r["prefix_lang"]], idx[r["noun_lang"]]] = r["value"]
        im = ax.imshow(mat, cmap="viridis")
        short = [lang.split("_")[0] for lang in languages]
        ax.set_xticks(range(len(languages)), short, rotation=90, fontsize=7)
        ax.set_yticks(range(len(languages)), short, fontsize=7)
        ax.set_xlabel("noun language Y", fontsize=8)
        ax.set_ylabel("prefix language X", fontsize=8)
        ax.set_title(CODE_SWITCH_TITLES[measure], fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Code-switching at layer {layer} (mean over items)", fontsize=10)
    return save_figure(fig, stem)


# ----------------------------------------------------------------------------- stages 3 and 4


def _short(languages: Sequence[str]) -> list[str]:
    return [lang.split("_")[0] for lang in languages]


def interaction_matrix(m, languages: Sequence[str], stem: Path, what: str) -> list[Path]:
    """Heatmap of M (x: ablated language, y: evaluation language) with the diagonal outlined, each
    cell annotated with its ΔCE and ± half the width of its 95% CI; beside it, the CI widths.
    m: stats.Resampled with point [G, G]."""
    from matplotlib.patches import Rectangle

    low, high = m.interval()
    G, names = len(languages), _short(languages)
    fig, axes = plt.subplots(1, 2, figsize=(2 * (0.6 * G + 2.5), 0.6 * G + 1.5), layout="constrained")
    panels = (
        (axes[0], m.point, f"ΔCE (nats): M[eval, ablated] ({what})", "viridis", "ΔCE (nats)"),
        (axes[1], high - low, "95% CI width", "Greys", "95% CI width of ΔCE (nats)"),
    )
    images = []
    for ax, values, title, cmap, unit in panels:
        im = ax.imshow(values, cmap=cmap)
        images.append(im)
        fig.colorbar(im, ax=ax, shrink=0.8, label=unit)
        ax.set_xticks(range(G), names, rotation=90, fontsize=7)
        ax.set_yticks(range(G), names, fontsize=7)
        ax.set_xlabel("ablated language's features")
        ax.set_ylabel("evaluation language")
        ax.set_title(title, fontsize=9)
        for i in range(G):
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.2))
    if G <= 12:
        half = (high - low) / 2
        cells = [[f"{m.point[i, j]:.2f}\n±{half[i, j]:.2f}" for j in range(G)] for i in range(G)]
        annotate_cells(axes[0], images[0], cells)
    return save_figure(fig, stem)


def mds_map(coords, labels, co_clustering, languages: Sequence[str], stem: Path, stress: float) -> list[Path]:
    """The first two MDS coordinates, coloured by cluster; an edge between two languages is as
    dark and thick as the share of resamples that put them in one cluster."""
    import numpy as np

    coords = np.asarray(coords)
    xy = coords if coords.shape[1] >= 2 else np.column_stack([coords[:, 0], np.zeros(len(coords))])
    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    G = len(languages)
    for i in range(G):
        for j in range(i + 1, G):
            w = float(co_clustering[i][j])
            if w > 0.05:
                ax.plot(xy[[i, j], 0], xy[[i, j], 1], color="black", alpha=w, lw=0.5 + 2.5 * w, zorder=1)
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(_short(languages)):
        ax.scatter(xy[i, 0], xy[i, 1], color=cmap(int(labels[i]) % 10), s=80, zorder=2)
        ax.annotate(name, xy[i], textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_title(
        f"MDS of the interaction distance (stress-1 {stress:.3f}); colour: Ward cluster;\n"
        "edges: share of resamples in one cluster",
        fontsize=9,
    )
    return save_figure(fig, stem)


def dendrogram(z, languages: Sequence[str], stem: Path, k: int) -> list[Path]:
    """Ward tree of the MDS coordinates, coloured below the cut into k clusters."""
    import numpy as np
    from scipy.cluster.hierarchy import dendrogram as draw

    z = np.asarray(z)
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    cut = (z[-k, 2] + z[-k + 1, 2]) / 2 if k > 1 else None
    draw(z, labels=_short(languages), ax=ax, color_threshold=cut)
    if cut is not None:
        ax.axhline(cut, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("Ward merge height (MDS space)")
    ax.set_title(f"Ward linkage on the MDS coordinates, cut at k = {k}", fontsize=9)
    return save_figure(fig, stem)


def co_clustering(co, languages: Sequence[str], stem: Path, ari: Mapping) -> list[Path]:
    """How often each pair of languages shares a cluster across the bootstrap resamples."""
    G = len(languages)
    fig, ax = plt.subplots(figsize=(0.5 * G + 2.5, 0.5 * G + 1.5), layout="constrained")
    im = ax.imshow(co, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of resamples in one cluster")
    names = _short(languages)
    ax.set_xticks(range(G), names, rotation=90, fontsize=7)
    ax.set_yticks(range(G), names, fontsize=7)
    annotate_cells(ax, im, [[f"{co[i][j]:.2f}" for j in range(G)] for i in range(G)])
    ax.set_title(
        f"co-clustering over {ari['n_resamples']} resamples (ARI vs point: mean {ari['mean']:.2f})",
        fontsize=9,
    )
    return save_figure(fig, stem)


def synergy_intra_inter(summary: Mapping, stem: Path) -> list[Path]:
    """Mean pair synergy of intra- and inter-cluster pairs across layers, 95% CIs, with and
    without degenerate pairs (panels); the permutation p-value above each layer."""
    layers = sorted(int(k) for k in summary if k != "all_layers")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, layout="constrained")
    for ax, which in zip(axes, ("with_degenerate", "without_degenerate")):
        for group, colour, dx in (("intra", "tab:red", -0.08), ("inter", "tab:blue", 0.08)):
            est = [summary[str(L)][which][group] for L in layers]
            y = [e["value"] for e in est]
            err = [[e["value"] - e["ci_low"] for e in est], [e["ci_high"] - e["value"] for e in est]]
            ax.errorbar(
                [L + dx for L in layers],
                y,
                yerr=err,
                color=colour,
                marker="o",
                ms=4,
                capsize=3,
                label=f"{group}-cluster pairs",
            )
        for L in layers:
            p = summary[str(L)][which]["permutation_p"]
            ax.annotate(
                f"p={p:.2g}",
                (L, 1.0),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="bottom",
                fontsize=6,
            )
        ax.axhline(0, color="black", lw=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(which.replace("_", " ") + " pairs", fontsize=9, pad=14)
        ax.set_ylabel("synergy ΔAB − ΔA − ΔB (nats)")
    axes[0].legend(fontsize=7)
    return save_figure(fig, stem)


def synergy_vs_cosine(rows: Sequence[Mapping], stem: Path) -> list[Path]:
    """Each pair's synergy (mean of its two sides) against the |cosine| of its two top-1 decoder
    directions, coloured intra/inter; degenerate pairs marked ×."""
    pairs: dict[tuple, list] = {}
    for r in rows:
        pairs.setdefault((r["layer"], r["lang_a"], r["lang_b"]), []).append(r)
    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    seen = set()
    for sides in pairs.values():
        r = sides[0]
        y = sum(s["synergy"] for s in sides) / len(sides)
        group = "intra" if r["intra_cluster"] else "inter"
        label = f"{group}-cluster{' (degenerate)' if r['degenerate'] else ''}"
        ax.scatter(
            abs(r["cosine"]),
            y,
            color="tab:red" if group == "intra" else "tab:blue",
            marker="x" if r["degenerate"] else "o",
            s=20,
            label=None if label in seen else label,
        )
        seen.add(label)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("|cosine| of the two top-1 decoder directions")
    ax.set_ylabel("pair synergy (nats)")
    ax.legend(fontsize=7)
    ax.set_title("synergy against shared direction (all layers)", fontsize=9)
    return save_figure(fig, stem)


def synergy_pairs(
    rows: Sequence[Mapping], languages: Sequence[str], order: Sequence[int], stem: Path
) -> list[Path]:
    """Per layer, a language × language heatmap: cell [A, B] = synergy on A's texts when A's and
    B's top-1 features are ablated together; languages in `order` (by cluster)."""
    import numpy as np

    layers = sorted({int(r["layer"]) for r in rows})
    G = len(languages)
    idx = {lang: i for i, lang in enumerate(languages)}
    fig, axes = _grid_plain(len(layers), G)
    for ax, L in zip(axes, layers):
        s = np.full((G, G), np.nan)
        for r in rows:
            if int(r["layer"]) == L:
                other = r["lang_b"] if r["eval_lang"] == r["lang_a"] else r["lang_a"]
                s[idx[r["eval_lang"]], idx[other]] = r["synergy"]
        s = s[np.ix_(order, order)]
        lim = np.nanmax(np.abs(s)) if np.isfinite(s).any() else 1.0
        im = ax.imshow(s, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax, shrink=0.7, label="synergy (nats)")
        names = [_short(languages)[i] for i in order]
        ax.set_xticks(range(G), names, rotation=90, fontsize=6)
        ax.set_yticks(range(G), names, fontsize=6)
        ax.set_title(f"layer {L}", fontsize=8)
    fig.suptitle(
        "synergy on the row language's texts, ablating row + column top-1 (languages ordered by cluster)",
        fontsize=9,
    )
    return save_figure(fig, stem)


def _grid_plain(n: int, G: int, ncols: int = 4):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    size = 0.35 * G + 1.5
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


N_CLASSES = {"topic": len(SIB_CATEGORIES), "sentiment": 5}  # 5 star ratings; QA is free text: no chance


def chance_level(task: str, metric: str) -> float | None:
    """The accuracy of a uniform guess, 1 / number of classes; None where there is no such level."""
    return 1 / N_CLASSES[task] if metric == "accuracy" and task in N_CLASSES else None


DOWNSTREAM_SERIES = {
    "baseline": ("black", "o"),
    "own": ("tab:red", "v"),
    "random": ("grey", "s"),
    "cross": ("tab:green", "D"),
}


def downstream_figure(rows: Sequence[dict], task: str, layer: int, stem: Path) -> list[Path]:
    """One panel per metric of a task at one layer: per language, the baseline and the values under
    ablation of the language's own top-1+2, of random features (mean over draws, CI over draws and
    items) and of another language's top-1+2 (cross-language control), with 95% bootstrap CIs.
    rows: the task's rows of downstream_results.csv (quantity "value" is used)."""

    def keep(r):
        return (
            r["quantity"] == "value"
            and r["draw"] == ""
            and (r["condition"] == "baseline" or r["layer"] == layer)
        )

    rows = [r for r in rows if keep(r)]
    panels = list(dict.fromkeys((r["metric"], r["scoring"]) for r in rows))
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(3.2, 0.6 * len(langs) + 1.2) * len(panels), 3.0),
        squeeze=False,
        layout="constrained",
    )
    for ax, (metric, scoring) in zip(axes[0], panels):
        for s, (name, (colour, marker)) in enumerate(DOWNSTREAM_SERIES.items()):
            pts = {r["lang"]: r for r in _select(rows, metric=metric, scoring=scoring, condition=name)}
            xs = [i + (s - 1.5) * 0.15 for i, lang in enumerate(langs) if lang in pts]
            ys = [pts[lang]["value"] for lang in langs if lang in pts]
            lo = [pts[lang]["value"] - pts[lang]["ci_low"] for lang in langs if lang in pts]
            hi = [pts[lang]["ci_high"] - pts[lang]["value"] for lang in langs if lang in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=marker, color=colour, ms=4, lw=0.8, capsize=2, label=name)
        chance = chance_level(task, metric)
        if chance is not None:
            ax.axhline(chance, color="black", ls=":", lw=0.8, label=f"chance (1/{N_CLASSES[task]})")
        ax.set_xticks(range(len(langs)), [lang.split("_")[0] for lang in langs], fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_ylabel(metric.replace("_", " "), fontsize=7)
        ax.set_title(f"{metric} ({scoring})", fontsize=9)
    legend = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=5, fontsize=7, frameon=False)
    fig.suptitle(
        f"{task}, ablation at layer {layer}: baseline vs own top-1+2 vs random (same k) "
        "vs another language's top-1+2; 95% CI",
        fontsize=9,
    )
    return save_figure(fig, stem)


STEERING_SERIES = {
    "sv": ("tab:blue", "o"),
    "gated": ("tab:red", "v"),
    "random_dir": ("grey", "s"),
    "random_gate": ("tab:orange", "D"),
}


def _steering_panels(rows: Sequence[dict], task: str) -> list[tuple]:
    """(source, target, layer, n_layers) of every steered cell of `task` in the results rows."""
    return list(
        dict.fromkeys(
            (r["source"], r["target"], r["layer"], r["n_layers"])
            for r in rows
            if r["task"] == task and r["method"] != "none"
        )
    )


def _yerr(pts: Sequence[dict]) -> list[list[float]]:
    return [[r["value"] - r["ci_low"] for r in pts], [r["ci_high"] - r["value"] for r in pts]]


def steering_success(rows: Sequence[dict], task: str, stem: Path) -> list[Path]:
    """Success rate against α, one panel per (source → target, layers), one line per method (controls'
    means over draws), the unsteered rate as a dashed line; 95% bootstrap CIs. rows: steering_results.csv."""
    panels = _steering_panels(rows, task)
    fig, axes = _grid(len(panels), ncols=3)
    for ax, (src, tgt, layer, n) in zip(axes, panels):
        cell = _select(
            [r for r in rows if r["draw"] == ""], task=task, source=src, target=tgt, metric="success"
        )
        base = [r for r in cell if r["method"] == "none"]
        if base:
            ax.axhline(base[0]["value"], color="black", ls="--", lw=0.8, label="none")
        for method, (colour, marker) in STEERING_SERIES.items():
            pts = sorted(_select(cell, method=method, layer=layer, n_layers=n), key=lambda r: r["alpha"])
            if pts:
                ax.errorbar(
                    [r["alpha"] for r in pts],
                    [r["value"] for r in pts],
                    yerr=_yerr(pts),
                    fmt=f"-{marker}",
                    color=colour,
                    ms=4,
                    lw=0.8,
                    capsize=2,
                    label=method,
                )
        ax.set_title(f"{src.split('_')[0]}→{tgt.split('_')[0]}, layers {layer}..{layer + n - 1}", fontsize=8)
        ax.set_xlabel("α", fontsize=7)
        ax.xaxis.set_major_locator(AutoLocator())
        ax.set_ylim(-0.05, 1.05)
    _finish(fig, axes, f"{task}: success rate against α (95% CI)", "success rate")
    return save_figure(fig, stem)


def steering_tradeoff(rows: Sequence[dict], task: str, budget: float, stem: Path) -> list[Path]:
    """Success against collateral ΔCE (mean over the other languages), one point per α, one line per method,
    with both 95% CIs; the collateral budget as a dotted line."""
    panels = _steering_panels(rows, task)
    fig, axes = _grid(len(panels), ncols=3)
    means = [r for r in rows if r["draw"] == ""]
    for ax, (src, tgt, layer, n) in zip(axes, panels):
        for method, (colour, marker) in STEERING_SERIES.items():
            sel = dict(source=src, target=tgt, layer=layer, n_layers=n, method=method)
            succ = {r["alpha"]: r for r in _select(means, task=task, metric="success", **sel)}
            coll = {r["alpha"]: r for r in _select(means, task="collateral", metric="delta_ce", **sel)}
            alphas = sorted(set(succ) & set(coll))
            if alphas:
                ys, xs = [succ[a] for a in alphas], [coll[a] for a in alphas]
                ax.errorbar(
                    [r["value"] for r in xs],
                    [r["value"] for r in ys],
                    xerr=_yerr(xs),
                    yerr=_yerr(ys),
                    fmt=f"-{marker}",
                    color=colour,
                    ms=4,
                    lw=0.8,
                    capsize=2,
                    label=method,
                )
        ax.axvline(budget, color="black", ls=":", lw=0.8)
        ax.set_title(f"{src.split('_')[0]}→{tgt.split('_')[0]}, layers {layer}..{layer + n - 1}", fontsize=8)
        ax.set_xlabel("collateral ΔCE (nats/token)", fontsize=7)
        ax.xaxis.set_major_locator(AutoLocator())
        ax.set_ylim(-0.05, 1.05)
    title = f"{task}: success against collateral ΔCE, one point per α (95% CIs; dotted: budget)"
    _finish(fig, axes, title, "success rate")
    return save_figure(fig, stem)
