"""The cross-linguistic interaction matrix, a distance from it, MDS + Ward clusters and their stability.

M[i, j] is the mean ΔCE on language i's evaluation texts when language j's top features are
ablated: Section 5's own conditions (every language's feature set, measured on every
language's texts), so a stage that builds M reads them from the condition store. Per layer
M_L comes with a joint bootstrap over sentence ids (langsae.stats); an aggregate over layers
is a weighted sum of the M_L per ablated language (column), so the same weights act on every
replicate:
  mean       the mean over the chosen layers (as the earlier reproduction did);
  peak       column j at language j's held-out peak layer from Section 5;
  a layer    that layer alone.
Distances (symmetric, zero diagonal):
  ratio      D_ij = max(0, 1 − (M_ij + M_ji) / (M_ii + M_jj)) (the earlier reproduction's);
  profile    the correlation distance between the languages' normalised interaction profiles,
             profile_i = (row i of M, column i of M), both divided by M_ii.
Neither is Euclidean in general, and Ward linkage assumes Euclidean geometry, so the clusters
are Ward on the coordinates of a metric MDS of D (sklearn, several seeded inits); the
negative eigenvalue mass of the double-centred D² says how far D is from Euclidean. Stability:
every bootstrap replicate of M is clustered again; the co-clustering matrix is how often each
pair of languages shares a cluster, and the adjusted Rand index compares each replicate's
clusters with the point clustering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform
from sklearn.manifold import MDS
from sklearn.metrics import adjusted_rand_score, silhouette_score
from tqdm.auto import tqdm

from langsae.artifacts import read_json
from langsae.config import RunConfig
from langsae.errors import UserError
from langsae.features import NuResults, stage_command
from langsae.stats import JointBootstrap, Resampled, mean_over_draws
from langsae.sweep import NO_LANGUAGE, RANDOM, Condition, SweepResult, language_conditions, random_conditions

FEATURE_SETS = {"top1": (1,), "top2": (2,), "top1+2": (1, 2)}
AGGREGATES = ("mean", "peak")  # or a layer number
DISTANCES = ("ratio", "profile")


# ----------------------------------------------------------------------------- the matrix


def interaction_conditions(
    nu: NuResults, languages: Sequence[str], mode: str, ranks: Sequence[int], random_draws: int, seed: int
) -> list[Condition]:
    """Per layer: each language's features at these nu ranks, and `random_draws` draws of
    len(ranks) random live features (the reference level). All are Section 5 conditions."""
    out = []
    for _, lf in sorted(nu.layers.items()):
        out += language_conditions(lf, languages, mode, ranks)
        out += random_conditions(lf, mode, len(ranks), random_draws, seed)
    return out


@dataclass(frozen=True)
class LayerMatrices:
    """Per-layer interaction matrices and the random reference, bootstrapped jointly over sentence ids.

    m: point [K, G, G] (layer, evaluation language i, ablated language j), reps [n_boot, K, G, G];
    random: point [K, G], reps [n_boot, K, G], ΔCE of random features on each language's texts,
    mean over draws (replicates resample draws too); None without draws.
    """

    languages: tuple[str, ...]
    layers: tuple[int, ...]
    m: Resampled
    random: Resampled | None

    def aggregate(self, weights: np.ndarray) -> tuple[Resampled, Resampled | None]:
        """M = Σ_L weights[j, L] M_L[:, j] per column j (weights [G, K], rows sum to 1): point [G, G];
        the random reference weighted by the mean of those weights over columns: point [G]."""
        m = Resampled(
            np.einsum("lij,jl->ij", self.m.point, weights), np.einsum("blij,jl->bij", self.m.reps, weights)
        )
        if self.random is None:
            return m, None
        w = weights.mean(axis=0)
        return m, Resampled(
            np.einsum("li,l->i", self.random.point, w), np.einsum("bli,l->bi", self.random.reps, w)
        )


def layer_matrices(
    result: SweepResult, features: str, n_random: int, seed: int, n_boot: int
) -> LayerMatrices:
    """Per-layer M from a sweep of `interaction_conditions` (feature set named `features`; random
    draws of `n_random` features), with a joint bootstrap of n_boot replicates over sentence ids."""
    ev = result.evalset
    langs, layers = ev.languages, tuple(sorted({c.layer for c in result.conditions}))
    plan = JointBootstrap(ev.sentence_ids, ev.lang_index, len(langs), seed, n_boot)
    cols = [result.index(L, j, features) for L in layers for j in langs]
    m = plan.means((result.ablated[cols] - result.baseline).T)  # point [G, K*G], reps [B, G, K*G]
    K, G = len(layers), len(langs)
    point = m.point.reshape(G, K, G).transpose(1, 0, 2)
    reps = m.reps.reshape(-1, G, K, G).transpose(0, 2, 1, 3)
    random = None
    draws = result.random_draws(layers[0], n_random)
    if draws:
        per_layer = []
        for L in layers:
            rcols = [
                result.index(L, NO_LANGUAGE, RANDOM, d, n_random) for d in result.random_draws(L, n_random)
            ]
            per_layer.append(mean_over_draws(plan.means((result.ablated[rcols] - result.baseline).T), seed))
        random = Resampled(
            np.stack([r.point for r in per_layer]), np.stack([r.reps for r in per_layer], axis=1)
        )
    return LayerMatrices(tuple(langs), layers, Resampled(point, reps), random)


def parse_aggregate(text: str) -> str | int:
    """'mean' / 'peak', or a layer number."""
    if text in AGGREGATES:
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"--aggregate: {text!r} is neither {' nor '.join(AGGREGATES)} nor a layer number"
        ) from None


def layer_weights(
    aggregate: str | int,
    layers: Sequence[int],
    languages: Sequence[str],
    peaks: Mapping[str, int] | None = None,
) -> np.ndarray:
    """[G, K] weights of each layer for each ablated language's column (see LayerMatrices.aggregate)."""
    K, G = len(layers), len(languages)
    if aggregate == "mean":
        return np.full((G, K), 1.0 / K)
    if aggregate == "peak":
        chosen = [peaks[lang] for lang in languages]
    else:
        chosen = [aggregate] * G
    missing = sorted({L for L in chosen if L not in layers})
    if missing:
        raise UserError(
            f"layer(s) {missing} needed by --aggregate {aggregate} are not among --layers {list(layers)}"
        )
    w = np.zeros((G, K))
    w[np.arange(G), [list(layers).index(L) for L in chosen]] = 1.0
    return w


# ----------------------------------------------------------------------------- distance


def ratio_distance(m: np.ndarray) -> np.ndarray | None:
    """D_ij = max(0, 1 − (M_ij + M_ji) / (M_ii + M_jj)), zero diagonal, [G, G]; None if some
    M_ii + M_jj ≤ 0 (the ratio then means nothing)."""
    diag = np.diag(m)
    den = diag[:, None] + diag[None, :]
    if not (den > 0).all():
        return None
    d = np.clip(1.0 - (m + m.T) / den, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return d


def profile_distance(m: np.ndarray) -> np.ndarray | None:
    """Correlation distance between profile_i = (M[i, :], M[:, i]) / M_ii, [G, G]; None if some
    M_ii ≤ 0 or a profile is constant."""
    diag = np.diag(m)
    if not (diag > 0).all():
        return None
    profiles = np.concatenate([m / diag[:, None], (m / diag[None, :]).T], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = squareform(pdist(profiles, "correlation"))
    return d if np.isfinite(d).all() else None


DISTANCE_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray | None]] = {
    "ratio": ratio_distance,
    "profile": profile_distance,
}


def negative_eigen_mass(d: np.ndarray) -> float:
    """How far D is from Euclidean: Σ|negative eigenvalues| / Σ|eigenvalues| of B = −½ J D² J
    (J the centring matrix); 0 exactly when D embeds in a Euclidean space."""
    n = len(d)
    j = np.eye(n) - 1.0 / n
    eig = np.linalg.eigvalsh(-0.5 * j @ (d**2) @ j)
    total = np.abs(eig).sum()
    return float(np.abs(eig[eig < 0]).sum() / total) if total > 0 else 0.0


# ----------------------------------------------------------------------------- clusters


@dataclass(frozen=True)
class Clustering:
    """MDS coordinates [G, dims] of a distance, Kruskal's stress-1 of that embedding, the Ward
    linkage of the coordinates (scipy format) and the cut at k (labels [G], numbered 0.. in
    order of first appearance)."""

    coords: np.ndarray
    stress: float
    linkage: np.ndarray
    labels: np.ndarray


def canonical_labels(labels: Sequence[int]) -> np.ndarray:
    """Renumber cluster labels 0, 1, ... in order of first appearance (equal partitions, equal labels)."""
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(x), len(order)) for x in labels])


def mds(d: np.ndarray, dims: int, n_init: int, seed: int) -> tuple[np.ndarray, float]:
    """Metric MDS of a precomputed distance (SMACOF, best of n_init seeded random starts):
    coordinates [G, dims] and Kruskal's stress-1 = sqrt(Σ (‖x_i − x_j‖ − D_ij)² / Σ D_ij²)."""
    model = MDS(
        n_components=dims,
        metric_mds=True,
        metric="precomputed",
        n_init=n_init,
        init="random",
        random_state=seed,
        normalized_stress=False,
    )
    coords = model.fit_transform(d)
    fitted = squareform(pdist(coords))
    total = (d**2).sum()
    return coords, float(math.sqrt(((fitted - d) ** 2).sum() / total)) if total > 0 else 0.0


def ward_cut(z: np.ndarray, k: int) -> np.ndarray:
    """The Ward tree cut into k clusters: labels [G] (canonical)."""
    return canonical_labels(fcluster(z, t=k, criterion="maxclust"))


def cluster(d: np.ndarray, k: int, dims: int, n_init: int, seed: int) -> Clustering:
    """Ward linkage on the MDS coordinates of D, cut at k."""
    coords, stress = mds(d, dims, n_init, seed)
    z = linkage(coords, method="ward")
    return Clustering(coords, stress, z, ward_cut(z, k))


def ward_on_distance(d: np.ndarray, k: int) -> np.ndarray:
    """The earlier reproduction's clusters: Ward linkage run directly on D (not Euclidean), cut at k."""
    return ward_cut(linkage(squareform(d, checks=False), method="ward"), k)


def silhouettes(c: Clustering) -> dict[int, float]:
    """Silhouette score of the Ward tree cut at k, on the MDS coordinates, for k = 2..G−1."""
    out = {}
    for k in range(2, len(c.coords)):
        labels = ward_cut(c.linkage, k)
        out[k] = float(silhouette_score(c.coords, labels)) if len(set(labels)) > 1 else math.nan
    return out


@dataclass(frozen=True)
class Stability:
    """co_clustering [G, G]: share of the used replicates in which languages i and j share a
    cluster; ari [R]: adjusted Rand index of each used replicate's clusters against the point
    clustering; n_skipped: replicates whose distance is undefined (a diagonal ≤ 0)."""

    co_clustering: np.ndarray
    ari: np.ndarray
    n_skipped: int

    def ari_summary(self) -> dict:
        a = self.ari
        if len(a) == 0:
            return {
                "mean": math.nan,
                "median": math.nan,
                "q05": math.nan,
                "q95": math.nan,
                "n_resamples": 0,
                "n_skipped": self.n_skipped,
            }
        return {
            "mean": float(a.mean()),
            "median": float(np.median(a)),
            "q05": float(np.quantile(a, 0.05)),
            "q95": float(np.quantile(a, 0.95)),
            "n_resamples": len(a),
            "n_skipped": self.n_skipped,
        }


def stability(
    m_reps: np.ndarray, distance: str, point_labels: np.ndarray, k: int, dims: int, n_init: int, seed: int
) -> Stability:
    """Cluster every bootstrap replicate of M (m_reps [R, G, G]) as the point estimate was."""
    fn = DISTANCE_FUNCTIONS[distance]
    G = m_reps.shape[1]
    co = np.zeros((G, G))
    ari, skipped = [], 0
    for m in tqdm(m_reps, desc="cluster stability", unit="resample", leave=False):
        d = fn(m)
        if d is None:
            skipped += 1
            continue
        labels = cluster(d, k, dims, n_init, seed).labels
        co += labels[:, None] == labels[None, :]
        ari.append(adjusted_rand_score(point_labels, labels))
    used = len(ari)
    return Stability(co / used if used else np.full((G, G), math.nan), np.array(ari), skipped)


# ----------------------------------------------------------------------------- rows and the contract file


def matrix_rows(
    m: Resampled, languages: Sequence[str], layer, features: str, mode: str, n_texts: Mapping[str, int]
) -> list[dict]:
    """Tidy rows of one matrix (point [G, G], eval × ablated) with 95% CIs; `layer` = a layer or the
    aggregate's name."""
    low, high = m.interval()
    return [
        {
            "eval_lang": ei,
            "ablated_lang": aj,
            "features": features,
            "mode": mode,
            "layer": layer,
            "delta_ce": float(m.point[i, j]),
            "ci_low": float(low[i, j]),
            "ci_high": float(high[i, j]),
            "n_texts": n_texts[ei],
        }
        for i, ei in enumerate(languages)
        for j, aj in enumerate(languages)
    ]


def random_rows(
    r: Resampled, languages: Sequence[str], layer, k: int, mode: str, n_texts: Mapping[str, int]
) -> list[dict]:
    """Tidy rows of the random reference (point [G]): ablated_lang 'random', features 'random k=<k>'."""
    low, high = r.interval()
    return [
        {
            "eval_lang": e,
            "ablated_lang": RANDOM,
            "features": f"random k={k}",
            "mode": mode,
            "layer": layer,
            "delta_ce": float(r.point[i]),
            "ci_low": float(low[i]),
            "ci_high": float(high[i]),
            "n_texts": n_texts[e],
        }
        for i, e in enumerate(languages)
    ]


MATRIX_COLUMNS = [
    "eval_lang",
    "ablated_lang",
    "features",
    "mode",
    "layer",
    "delta_ce",
    "ci_low",
    "ci_high",
    "n_texts",
]
# Artifact names (sae_features/<run>/ files; output/<run>/ figure stems, + .png/.pdf)
MATRIX_FILE = "interaction_matrix.csv"
CLUSTERS_FILE = "interaction_clusters.json"
META_FILE = "interaction_meta.json"
MATRIX_FIGURE, MDS_FIGURE = "interaction_matrix", "interaction_mds"
DENDROGRAM_FIGURE, COCLUSTERING_FIGURE = "interaction_dendrogram", "interaction_coclustering"
FIGURES = (MATRIX_FIGURE, MDS_FIGURE, DENDROGRAM_FIGURE, COCLUSTERING_FIGURE)
STAGE3_SCRIPT = "cross_linguistic_interactions.py"


def stage3_command(cfg: RunConfig, n_texts: int, mode: str) -> str:
    return stage_command(STAGE3_SCRIPT, cfg, f"--n-texts {n_texts}", f"--mode {mode}")


def require_clusters(cfg: RunConfig, mode: str, n_texts: int) -> Path:
    """Stage 3's clusters file, refused at once (before any model is loaded) when it is missing."""
    path = Path(cfg.features_dir) / CLUSTERS_FILE
    if not path.exists():
        raise UserError(
            f"no interaction clusters in {path}; run `{stage3_command(cfg, n_texts, mode)}` first"
        )
    return path


def load_clusters(cfg: RunConfig, store_settings: dict, mode: str, n_texts: int) -> dict:
    """Stage 3's saved clusters (interaction_clusters.json), refused when missing or made from
    other evaluation texts, model, nu run, ablation mode or languages."""
    path = require_clusters(cfg, mode, n_texts)
    clusters = read_json(path, stage3_command(cfg, n_texts, mode))  # unreadable: one line naming it
    made = clusters.get("settings", {})
    if (
        made.get("store") != store_settings
        or made.get("mode") != mode
        or made.get("languages") != list(cfg.languages)
    ):
        raise UserError(
            f"{path} was made with other settings (model, evaluation texts, nu run, mode or languages); "
            f"run `{stage3_command(cfg, n_texts, mode)}`"
        )
    return clusters


def format_clusters(c: dict) -> str:
    """The clusters for the terminal: each language's MDS + Ward cluster beside the earlier
    reproduction's Ward-on-D cluster, how often it shares a cluster with each of its cluster's
    members, and the fit and stability numbers."""
    langs = c["languages"]
    co = np.array(c["co_clustering"])
    lines = [
        f"{'language':<10}{'MDS+Ward':>9}{'Ward on D':>10}  "
        "co-clustering with its cluster (share of resamples)",
        "-" * 78,
    ]
    for i, lang in enumerate(langs):
        mates = [j for j, other in enumerate(langs) if j != i and c["labels"][other] == c["labels"][lang]]
        together = ", ".join(f"{langs[j]} {co[i, j]:.2f}" for j in mates) or "(alone)"
        lines.append(f"{lang:<10}{c['labels'][lang]:>9}{c['ward_on_distance_labels'][lang]:>10}  {together}")
    ari = c["ari"]
    sil = ", ".join(f"k={k}: {v:.2f}" for k, v in c["silhouette"].items())
    lines += [
        f"distance {c['distance_kind']}: negative eigenvalue mass {c['negative_eigen_mass']:.3f} "
        f"(0 = Euclidean); MDS stress-1 {c['stress']:.3f}",
        f"stability over {ari['n_resamples']} resamples ({ari['n_skipped']} undefined): ARI vs point "
        f"clusters mean {ari['mean']:.2f}, median {ari['median']:.2f}, "
        f"5-95% [{ari['q05']:.2f}, {ari['q95']:.2f}]",
        f"silhouette of the Ward cut on the MDS coordinates: {sil}",
        "cluster numbers are arbitrary; the two columns agree where they group the same languages",
    ]
    return "\n".join(lines)
