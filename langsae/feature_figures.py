"""Stage 6 figures of the ν stage's features, from its saved artifacts alone (no model, no SAE).

Reads sae_features/<run>/layer_L_{values,indices,mean_acts}.pt ([K, d_sae]: ν sorted
descending per language, the feature ids in that order, μ per language) and layer_L_top20.json.
Summaries are computed one layer at a time (a Qwen3 layer is 3 x 6.5 MB per language), and each
figure is drawn from those small summaries, so a test can draw it from numbers it writes itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from langsae import nu as nu_stage
from langsae.artifacts import save_text
from langsae.features import NU_SCRIPT
from langsae.plots import MaxNLocator, annotate_cells, plt, save_figure

N_RANDOM = 1000  # random live features per layer whose ν is the control of Figure 1

# What the plots stage writes, in output/<run>/SUBDIR/: figure stems (each a .png and a .pdf) and a table
SUBDIR = "features"
FIGURE1 = "figure1_layer{layer}"  # at the stage's --layer, as SPECIFICITY
DISTRIBUTIONS = "nu_distributions"
TOP1 = "top1_nu_by_layer"
OVERLAP = "topk_overlap"
SPECIFICITY = "specificity_layer{layer}"
TOP_FEATURES = "top_features.md"


@dataclass
class LayerSummary:
    """What the figures need from one layer: top[K, k] ν of each language's top-k; top_ids[K, k]
    their feature ids; random_nu[K, R] ν of R seeded random live features; hist[K, B] counts of
    ν over all features in `edges` [B + 1]; jaccard[K, K] of the top-k sets; exclusive[K] top-1 in
    no other language's top-k; mu_top[K*k, K] μ in every language of each language's top-k
    features (rows: language-major, rank-minor)."""

    layer: int
    top: np.ndarray
    top_ids: np.ndarray
    random_nu: np.ndarray
    hist: np.ndarray
    edges: np.ndarray
    jaccard: np.ndarray
    exclusive: np.ndarray
    mu_top: np.ndarray


def jaccard(sets: Sequence[set]) -> np.ndarray:
    """[K, K] |A ∩ B| / |A ∪ B| of each pair of sets."""
    k = len(sets)
    out = np.ones((k, k))
    for i in range(k):
        for j in range(k):
            union = sets[i] | sets[j]
            out[i, j] = len(sets[i] & sets[j]) / len(union) if union else 1.0
    return out


NU_REMAKE = f"python {NU_SCRIPT}"  # a caller with the run's config passes features.nu_command's


def summarise_layer(
    features_dir: Path, layer: int, top_k: int, seed: int, bins: int = 60, remake: str = NU_REMAKE
) -> LayerSummary:
    """One layer's summary from its ν artifacts (indices, values, mean_acts), each checked against the
    size and SHA-256 its done marker recorded; a damaged one is one line naming it and `remake`."""

    def load(key: str) -> torch.Tensor:
        return nu_stage.load_layer_file(features_dir, layer, key, remake)

    values, indices, mu = load("values").float(), load("indices").long(), load("mean_acts").float()
    n_lang = values.shape[0]
    nu = torch.empty_like(values).scatter_(1, indices, values)  # back to feature order: nu[l, f]
    live = torch.nonzero(mu.sum(0) > 0).flatten()
    g = torch.Generator().manual_seed(seed + layer)
    pick = live[torch.randperm(len(live), generator=g)[:N_RANDOM]]
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    hist = np.stack([np.histogram(values[i].numpy(), edges)[0] for i in range(n_lang)])
    tops = indices[:, :top_k]
    return LayerSummary(
        layer=layer,
        top=values[:, :top_k].numpy(),
        top_ids=tops.numpy(),
        random_nu=nu[:, pick].numpy(),
        hist=hist,
        edges=edges,
        jaccard=jaccard([set(r.tolist()) for r in tops]),
        exclusive=np.array(nu_stage.exclusive_top1(indices, top_k)),
        mu_top=mu[:, tops.flatten()].T.numpy(),
    )


# ----------------------------------------------------------------------------- figures


def figure1(s: LayerSummary, languages: Sequence[str], stem: Path) -> list[Path]:
    """Paper Figure 1: per language, ν of its top-k features (bars) next to random live features'
    ν (median, with the 5-95% range)."""
    k = s.top.shape[1]
    x = np.arange(len(languages))
    width = 0.8 / (k + 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(languages)), 3.4), layout="constrained")
    for r in range(k):
        ax.bar(x + r * width, s.top[:, r], width, label=f"top-{r + 1}")
    med = np.median(s.random_nu, axis=1)
    lo, hi = np.percentile(s.random_nu, 5, axis=1), np.percentile(s.random_nu, 95, axis=1)
    ax.bar(
        x + k * width,
        med,
        width,
        color="lightgrey",
        label=f"random live feature (median of {s.random_nu.shape[1]})",
    )
    ax.errorbar(x + k * width, med, yerr=[med - lo, hi - med], fmt="none", ecolor="black", lw=0.8, capsize=2)
    ax.set_xticks(x + k * width / 2, languages, rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("ν (mean activation in the language − mean in the others)", fontsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(
        f"Figure 1: ν of each language's top features vs random features, layer {s.layer}", fontsize=9
    )
    return save_figure(fig, stem)


def nu_distributions(summaries: Sequence[LayerSummary], languages: Sequence[str], stem: Path) -> list[Path]:
    """Per layer, the distribution of ν over all features for each language (log counts: the
    language-specific tail is a handful of features among thousands near zero)."""
    n = len(summaries)
    ncols = min(4, n)
    fig, axes = plt.subplots(
        (n + ncols - 1) // ncols,
        ncols,
        figsize=(3.2 * ncols, 2.4 * ((n + ncols - 1) // ncols) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, s in zip(axes.flat, summaries):
        for i, lang in enumerate(languages):
            ax.stairs(s.hist[i], s.edges, label=lang, lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"layer {s.layer}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("ν", fontsize=7)
    for ax in axes.flat[:n]:  # every panel: the log scale's range differs by layer
        ax.set_ylabel("features (log count)", fontsize=7)
    h, lab = axes.flat[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="outside lower center", ncol=min(5, len(lab)), fontsize=7, frameon=False)
    fig.suptitle("ν over all features, per language and layer (log count)", fontsize=10)
    return save_figure(fig, stem)


def top1_by_layer(summaries: Sequence[LayerSummary], languages: Sequence[str], stem: Path) -> list[Path]:
    """The top-1 ν of each language across layers."""
    layers = [s.layer for s in summaries]
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for i, lang in enumerate(languages):
        ax.plot(layers, [s.top[i, 0] for s in summaries], marker="o", ms=3, label=lang)
    ax.set_xlabel("layer")
    ax.set_ylabel("top-1 ν")
    ax.legend(fontsize=7, ncol=2, frameon=False)
    ax.set_title("top-1 ν of each language across layers", fontsize=9)
    return save_figure(fig, stem)


def _heatmap(
    ax,
    m: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    vmin=0.0,
    vmax=1.0,
    fmt="{:.2f}",
    cmap="viridis",
):
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    if m.size <= 400:
        annotate_cells(ax, im, [[fmt.format(v) for v in row] for row in m])
    return im


def overlap(summaries: Sequence[LayerSummary], languages: Sequence[str], stem: Path) -> list[Path]:
    """Per layer, the Jaccard index of the languages' top-k sets (off-diagonal > 0: shared
    features, the "one feature tops several languages" trap), and a last panel with how many
    languages have a top-1 in no other language's top-k."""
    n = len(summaries) + 1
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols, 3.0 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    k = summaries[0].top.shape[1]
    short = [lang.split("_")[0] for lang in languages]
    for ax, s in zip(axes.flat, summaries):
        im = _heatmap(ax, s.jaccard, short, short)
        ax.set_title(f"layer {s.layer}: top-{k} Jaccard", fontsize=8)
        ax.set_ylabel("language", fontsize=7)
    fig.colorbar(im, ax=axes.flat[n - 2], shrink=0.7, label=f"Jaccard index of the top-{k} sets")
    last = axes.flat[n - 1]
    layers = [s.layer for s in summaries]
    last.plot(layers, [int(s.exclusive.sum()) for s in summaries], marker="o")
    last.axhline(len(languages), color="grey", lw=0.6, ls=":")
    last.set_ylim(-0.3, len(languages) + 0.3)
    last.xaxis.set_major_locator(MaxNLocator(integer=True))
    last.set_xlabel("layer", fontsize=7)
    last.set_ylabel("languages", fontsize=7)
    last.set_title(f"languages whose top-1 is in no other top-{k}", fontsize=8)
    fig.suptitle("Do languages share their top features?", fontsize=10)
    return save_figure(fig, stem)


def specificity(s: LayerSummary, languages: Sequence[str], stem: Path) -> list[Path]:
    """μ of each language's top-k features measured in every language, each row divided by its
    largest value: a specific feature is one bright cell on the row of its own language."""
    k = s.top.shape[1]
    rows = [
        f"{lang} #{r + 1} (f{int(s.top_ids[i, r])})" for i, lang in enumerate(languages) for r in range(k)
    ]
    m = s.mu_top / np.maximum(s.mu_top.max(axis=1, keepdims=True), 1e-12)
    fig, ax = plt.subplots(
        figsize=(1.0 + 0.45 * len(languages), 1.0 + 0.22 * len(rows)), layout="constrained"
    )
    im = _heatmap(ax, m, rows, languages, cmap="magma")
    fig.colorbar(im, ax=ax, shrink=0.6, label="μ / row max")
    ax.set_xlabel("measured in")
    ax.set_ylabel("language's top feature (rank, id)")
    ax.set_title(
        f"Specificity at layer {s.layer}: μ of each language's top-{k} in every language", fontsize=9
    )
    return save_figure(fig, stem)


def top_features_markdown(
    features_dir: Path, layers: Sequence[int], languages: Sequence[str], n: int, remake: str = NU_REMAKE
) -> str:
    """Per layer and language, the top-n features with ν, μ in the language, the largest μ in
    another language, and the Neuronpedia link when the SAE has a Neuronpedia id."""
    lines = [
        "# Top features by ν",
        "",
        "ν = μ in the language − mean μ in the others; "
        "μ = mean activation over the language's selection tokens.",
        "",
    ]
    for L in layers:
        top20 = nu_stage.load_layer_file(features_dir, L, "top20", remake)
        lines += [
            f"## Layer {L}",
            "",
            "| language | rank | feature | ν | μ (own) | largest μ elsewhere | Neuronpedia |",
            "|---|---|---|---|---|---|---|",
        ]
        for lang in languages:
            for row in top20[lang][:n]:
                other, other_mu = max(
                    ((o, m) for o, m in row["mu"].items() if o != lang),
                    key=lambda x: x[1],
                    default=("-", float("nan")),
                )
                link = (
                    f"[{row['feature']}](https://www.neuronpedia.org/{row['neuronpedia']})"
                    if row.get("neuronpedia")
                    else "-"
                )
                lines.append(
                    f"| {lang} | {row['rank']} | {row['feature']} | {row['nu']:.4g} | {row['mu'][lang]:.4g} "
                    f"| {other_mu:.4g} ({other}) | {link} |"
                )
        lines.append("")
    return "\n".join(lines)


def write_all(
    features_dir: Path,
    out_dir: Path,
    layers: Sequence[int],
    languages: Sequence[str],
    layer: int,
    top_k: int,
    n_table: int,
    seed: int,
    remake: str = NU_REMAKE,
) -> list[Path]:
    """Every stage 6 figure and top_features.md into out_dir; returns the files written. `remake` is
    the command named when a ν artifact turns out damaged."""
    from tqdm.auto import tqdm

    layer_iter = tqdm(layers, desc="read nu layers", unit="layer")
    summaries = [summarise_layer(features_dir, L, top_k, seed, remake=remake) for L in layer_iter]
    at = summaries[list(layers).index(layer)]
    out = Path(out_dir)
    files = figure1(at, languages, out / FIGURE1.format(layer=layer))
    files += nu_distributions(summaries, languages, out / DISTRIBUTIONS)
    files += top1_by_layer(summaries, languages, out / TOP1)
    files += overlap(summaries, languages, out / OVERLAP)
    files += specificity(at, languages, out / SPECIFICITY.format(layer=layer))
    save_text(top_features_markdown(features_dir, layers, languages, n_table, remake), out / TOP_FEATURES)
    return files + [out / TOP_FEATURES]
