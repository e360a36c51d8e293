"""Figures that read on their own: a y label on every panel, colour bars that say what they measure,
cell text that reads on its cell, and the chance level on classification panels."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from langsae import feature_figures, plots
from langsae.stats import Resampled

LANGS = ["eng_Latn", "spa_Latn", "cmn_Hans", "arb_Arab"]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the functions draw, kept open instead of saved."""
    figs = []

    def keep(fig, stem):
        figs.append(fig)
        return []

    monkeypatch.setattr(plots, "save_figure", keep)
    monkeypatch.setattr(feature_figures, "save_figure", keep)
    yield figs
    plots.plt.close("all")


def panels(fig):
    """The figure's data panels (colour bars are axes too: matplotlib labels them with _colorbar)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def colour_bars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


@pytest.mark.parametrize(
    "colour, expected",
    [
        ("yellow", "black"),
        ("#fde725", "black"),
        ("white", "black"),
        ("navy", "white"),
        ("#440154", "white"),
        ("black", "white"),
    ],
)
def test_text_colour_reads_on_the_cell(colour, expected):
    # viridis runs from #440154 (dark purple) to #fde725 (yellow): the Mandarin cell was white on yellow
    assert plots.text_colour(to_rgba(colour)) == expected


def test_text_colour_threshold_is_where_both_contrasts_are_equal():
    # WCAG contrast with black (L + 0.05) / 0.05 equals contrast with white 1.05 / (L + 0.05) at L = 0.179
    for grey in np.linspace(0, 1, 101):
        lin = grey / 12.92 if grey <= 0.04045 else ((grey + 0.055) / 1.055) ** 2.4
        black, white = (lin + 0.05) / 0.05, 1.05 / (lin + 0.05)
        if abs(black - white) > 0.05:
            assert plots.text_colour((grey, grey, grey, 1.0)) == ("black" if black > white else "white")


def test_interaction_matrix_labels_its_colour_bars_and_picks_cell_text(drawn):
    point = np.array(
        [[0.1, 0.9, 0.5, 0.2], [0.3, 1.0, 0.0, 0.4], [0.6, 0.7, 0.95, 0.05], [0.2, 0.1, 0.3, 0.8]]
    )
    rng = np.random.default_rng(0)
    plots.interaction_matrix(Resampled(point, point + rng.normal(0, 0.05, (50, 4, 4))), LANGS, None, "top-1")
    (fig,) = drawn
    assert [cb.get_ylabel() for cb in colour_bars(fig)] == ["ΔCE (nats)", "95% CI width of ΔCE (nats)"]
    heat = panels(fig)[0]
    im = heat.images[0]
    for t in heat.texts:
        i, j = (round(v) for v in t.get_position()[::-1])
        assert t.get_color() == plots.text_colour(im.cmap(im.norm(point[i, j])))
    assert {t.get_color() for t in heat.texts} == {"black", "white"}  # both occur on this matrix


def test_every_panel_of_figure5_has_a_y_label(drawn):
    rows = [
        {
            "language": lang,
            "features": "top-1",
            "series": series,
            "layer": L,
            "delta_ce": 0.1 * L,
            "ci_low": 0.0,
            "ci_high": 0.2 * L,
        }
        for lang in LANGS
        for series in ("self", "others", "random")
        for L in range(3)
    ]
    plots.figure5(rows, LANGS, None, "directional")
    assert all(ax.get_ylabel() == "ΔCE (nats)" for ax in panels(drawn[0]))
    assert len(panels(drawn[0])) == len(LANGS)


def downstream_rows(task, metrics):
    return [
        {
            "task": task,
            "lang": lang,
            "layer": 3,
            "condition": cond,
            "metric": metric,
            "scoring": scoring,
            "quantity": "value",
            "draw": "",
            "value": 0.5,
            "ci_low": 0.4,
            "ci_high": 0.6,
        }
        for lang in LANGS
        for cond in plots.DOWNSTREAM_SERIES
        for metric, scoring in metrics
    ]


@pytest.mark.parametrize(
    "task, metrics, chance",
    [
        ("topic", [("accuracy", "loglik"), ("macro_f1", "loglik")], [1 / 7, None]),
        ("sentiment", [("accuracy", "generate"), ("qwk", "generate")], [1 / 5, None]),
        ("qa", [("f1", "generate"), ("em", "generate")], [None, None]),
    ],
)
def test_task_figures_have_y_labels_and_a_chance_line(drawn, task, metrics, chance):
    plots.downstream_figure(downstream_rows(task, metrics), task, 3, None)
    axes = panels(drawn[0])
    assert [ax.get_ylabel() for ax in axes] == [m.replace("_", " ") for m, _ in metrics]
    for ax, level in zip(axes, chance):
        flat = [
            line.get_ydata()[0]
            for line in ax.get_lines()
            if len(set(line.get_ydata())) == 1 and line.get_linestyle() == ":"
        ]
        assert flat == ([] if level is None else [pytest.approx(level)])


def test_feature_figures_label_every_panel(drawn):
    edges = np.linspace(-1, 1, 5)
    summaries = [
        feature_figures.LayerSummary(
            layer=L,
            top=np.ones((4, 2)),
            top_ids=np.arange(8).reshape(4, 2),
            random_nu=np.zeros((4, 10)),
            hist=np.ones((4, 4)),
            edges=edges,
            jaccard=np.eye(4),
            exclusive=np.ones(4, bool),
            mu_top=np.ones((8, 4)),
        )
        for L in range(3)
    ]
    feature_figures.nu_distributions(summaries, LANGS, None)
    feature_figures.overlap(summaries, LANGS, None)
    for fig in drawn:
        assert all(ax.get_ylabel() for ax in panels(fig)), [
            ax.get_title() for ax in panels(fig) if not ax.get_ylabel()
        ]
    assert [cb.get_ylabel() for cb in colour_bars(drawn[1])] == ["Jaccard index of the top-2 sets"]
