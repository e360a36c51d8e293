"""Stage 6 feature figures from small ν artifacts written here (hand-made μ, hand-computed summaries)."""

import numpy as np
import pytest
import torch
from nu_artifacts import write_fake_nu

from langsae import feature_figures, nu
from langsae.artifacts import save_json
from langsae.cli import run_main
from langsae.config import build_parser, resolve
from langsae.stages import plots as plot_sae_features

LANGS = ["eng_Latn", "fra_Latn", "kor_Hang"]
# mu [K, d_sae]: each language has one feature of its own (0, 1, 3); 2, 4 and 7 are equal everywhere
# (ν 0); 5 and 6 never fire (dead). Layer 1: English and French share feature 0.
MU = {
    0: [[5, 0, 1, 0, 0.5, 0, 0, 0.2], [0, 4, 1, 0, 0.5, 0, 0, 0.2], [0, 0, 1, 3, 0.5, 0, 0, 0.2]],
    1: [[5, 0, 1, 0, 0.5, 0, 0, 0.2], [5, 0, 1, 0, 0.5, 0, 0, 0.2], [0, 0, 1, 3, 0.5, 0, 0, 0.2]],
}


def write_nu_run(out_dir, describe):
    """What compute_nu_scores.py leaves, from MU: meta, directions and done (nu_artifacts), plus each
    layer's values, indices, mean_acts and top20, computed with the ν stage's own functions."""
    d_sae = 8
    g = torch.Generator().manual_seed(0)
    tc = {
        L: {
            "W_enc": torch.randn(d_sae, 4, generator=g),
            "W_dec": torch.randn(d_sae, 4, generator=g),
            "b_enc": torch.zeros(d_sae),
        }
        for L in MU
    }
    write_fake_nu(out_dir, describe, tc, LANGS, top_k=2, pool=2)
    for L, mu in MU.items():
        mu = torch.tensor(mu)
        values, indices = nu.rank_features(nu.nu_scores(mu))
        files = nu.layer_files(out_dir, L)
        for key, t in (("values", values), ("indices", indices), ("mean_acts", mu)):
            torch.save(t, files[key])
        top = nu.top_table(
            values, indices, mu, LANGS, 20, f"qwen3-0.6b/{L}-transcoder-hp" if L == 0 else None
        )
        save_json(top, files["top20"])


@pytest.fixture
def run(tmp_path):
    args = build_parser("t").parse_args(
        ["--model", "toy", "--out-dir", str(tmp_path / "run"), "--languages", ",".join(LANGS)]
    )
    cfg = resolve(args)
    write_nu_run(cfg.features_dir, cfg.describe())
    return cfg


def test_layer_summary_by_hand(run):
    s = feature_figures.summarise_layer(run.features_dir, 0, top_k=2, seed=0)
    np.testing.assert_allclose(s.top[:, 0], [5, 4, 3])
    assert s.top_ids.tolist() == [
        [0, 2],
        [1, 2],
        [3, 2],
    ]  # ties at ν 0 keep index order: feature 2 is second for all
    np.testing.assert_allclose(s.jaccard, [[1, 1 / 3, 1 / 3], [1 / 3, 1, 1 / 3], [1 / 3, 1 / 3, 1]])
    assert s.exclusive.tolist() == [True, True, True]
    np.testing.assert_allclose(s.mu_top[0], [5, 0, 0])  # English's top-1 measured in each language
    np.testing.assert_allclose(s.mu_top[1], [1, 1, 1])  # English #2 = feature 2, equally active everywhere
    np.testing.assert_allclose(s.mu_top[2], [0, 4, 0])  # French #1
    # the control: ν of the six live features (5 and 6 are dead), every one of them at this size
    nu_eng = nu.nu_scores(torch.tensor(MU[0]))[0]
    assert sorted(s.random_nu[0].tolist()) == pytest.approx(sorted(nu_eng[[0, 1, 2, 3, 4, 7]].tolist()))
    shared = feature_figures.summarise_layer(run.features_dir, 1, top_k=2, seed=0)
    assert shared.exclusive.tolist() == [False, False, True] and shared.jaccard[0, 1] == 1.0
    assert shared.hist.sum(axis=1).tolist() == [8, 8, 8]


def test_jaccard():
    np.testing.assert_allclose(
        feature_figures.jaccard([{1, 2}, {2, 3}, set()]), [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1]]
    )


def test_every_figure_and_the_table(run, tmp_path):
    out = tmp_path / "features"
    files = feature_figures.write_all(
        run.features_dir, out, [0, 1], LANGS, layer=0, top_k=2, n_table=3, seed=0
    )
    names = {f.name for f in files}
    for stem in (
        "figure1_layer0",
        "nu_distributions",
        "top1_nu_by_layer",
        "topk_overlap",
        "specificity_layer0",
    ):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names and (out / f"{stem}.png").stat().st_size > 1000
    md = (out / "top_features.md").read_text()
    link = "[0](https://www.neuronpedia.org/qwen3-0.6b/0-transcoder-hp/0)"
    assert f"| eng_Latn | 1 | 0 | 5 | 5 | 0 (fra_Latn) | {link} |" in md
    assert (
        "| fra_Latn | 1 | 0 | 2.5 | 5 | 5 (eng_Latn) | - |" in md
    )  # layer 1: no Neuronpedia id, the shared feature shows
    assert md.count("| kor_Hang |") == 6  # 3 rows x 2 layers


def test_script_writes_under_output_and_refuses_missing_nu(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        plot_sae_features, "model_layers", lambda cfg: 28
    )  # layer 5 exists: whether the toy is built or not
    argv = [
        "--model",
        "toy",
        "--out-dir",
        str(run.features_dir),
        "--languages",
        ",".join(LANGS),
        "--top-k",
        "2",
    ]
    assert plot_sae_features.main(argv) == {"computed": 11, "cached": 0, "unit": "file"}
    out = run.features_dir / "figures" / "features"  # beside a run folder outside sae_features/
    assert (out / "figure1_layer1.png").exists()  # layer 10 not computed: the middle of layers 0, 1
    assert run_main(plot_sae_features.main, [*argv, "--layer", "5"]) == 2
    assert "compute_nu_scores.py" in capsys.readouterr().err
    empty = ["--model", "toy", "--out-dir", str(tmp_path / "none"), "--languages", ",".join(LANGS)]
    assert run_main(plot_sae_features.main, empty) == 2
    assert "run `python compute_nu_scores.py --model toy" in capsys.readouterr().err
