"""Downstream metrics against hand-computed values (and sklearn for the confusion-matrix ones)."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from langsae import metrics as m


@pytest.mark.parametrize(
    "pred, golds, em, f1",
    [
        ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),  # case, article, punctuation
        ("the cat sat on the mat", ["a cat on a mat"], 0.0, 2 * 0.75 / 1.75),  # P 3/4, R 3/3
        ("x x y", ["x y y"], 0.0, 2 / 3),  # multiset overlap: one x, one y
        ("U.S. army", ["US Army"], 1.0, 1.0),  # punctuation inside a word is deleted, not split on
        ("the", [""], 1.0, 0.0),  # both normalise to nothing: EM 1, F1 0 in the official v1.1 script
        ("Paris", ["London", "paris", "Rome"], 1.0, 1.0),  # max over gold answers
        ("in  1990 ,", ["1990"], 0.0, 2 * 0.5 / 1.5),  # whitespace collapsed; P 1/2, R 1
        ("anthem", ["an them"], 0.0, 0.0),  # articles only as whole words: "an them" -> "them"
    ],
)
def test_squad(pred, golds, em, f1):
    assert m.squad_em(pred, golds) == em
    assert m.squad_f1(pred, golds) == pytest.approx(f1)


def test_squad_normalize_keeps_non_ascii_punctuation():
    # the official script strips string.punctuation only; Chinese full stops stay (one reason for the
    # language-aware F1)
    assert m.squad_normalize("北京。") == "北京。"
    assert m.squad_f1("北京大学", ["北京"]) == 0.0  # one whitespace token each: no partial credit


@pytest.mark.parametrize(
    "pred, gold, lang, f1",
    [
        ("北京大学", "北京", "zh", 2 * 0.5 / 1.5),  # [北 京 大 学] vs [北 京]: P 2/4, R 1
        ("2008年奥运会", "2008年。", "zh", 2 * 0.4 / 1.4),  # [2008 年 奥 运 会] vs [2008 年]: P 2/5, R 1
        ("กรุงเทพ", "กรุงเทพมหานคร", "th", 0.7),  # 7 of 13 characters, all 7 predicted ones right
        ("東京都", "東京", "ja", 0.8),  # P 2/3, R 1
        ("la casa blanca", "casa", "es", 2 * 0.5 / 1.5),  # Spanish article dropped: [casa blanca] vs [casa]
        ("Hà Nội của", "Hà Nội", "vi", 1.0),  # a Vietnamese MLQA article dropped
        ("«Paris»", "Paris", "fr", 1.0),  # Unicode punctuation dropped for every language
    ],
)
def test_language_f1(pred, gold, lang, f1):
    assert m.language_f1(pred, [gold], lang) == pytest.approx(f1)


def test_mixed_segmentation():
    assert m.mixed_segmentation("iPhone手机 2 台") == ["iPhone", "手", "机", "2", "台"]


def test_parse_rating_counts_unparseable():
    assert m.parse_rating(" 4 stars") == 4
    assert m.parse_rating("I'd say 5/5") == 5
    assert m.parse_rating("five") is None
    assert m.parse_rating(" 0") is None and m.parse_rating("9") is None  # a digit, but not a label
    preds = [m.parse_rating(t) for t in [" 3", "great", "2.", "", "7"]]
    assert sum(p is None for p in preds) == 3


GOLD = np.array([1, 2, 4, 5, 5])
PRED = np.array([1, 2, 5, 5, 2])


def test_qwk_hand_computed_with_a_missing_class():
    """Class 3 appears on neither side. By hand (labels 1..5, weights (i-j)^2): observed
    disagreement 1 + 9 = 10; expected sum_ij r_i c_j (i-j)^2 / n = 140 / 5 = 28; kappa = 1 - 10/28.
    Without fixed labels the classes would be renumbered 1,2,4,5 -> 0..3 and kappa = 46/71."""
    conf = m.weighted_confusion(np.ones((1, 5)), GOLD, PRED, [1, 2, 3, 4, 5])
    assert m.qwk_from_confusion(conf)[0] == pytest.approx(9 / 14)
    assert cohen_kappa_score(GOLD, PRED, labels=[1, 2, 3, 4, 5], weights="quadratic") == pytest.approx(9 / 14)
    assert cohen_kappa_score(GOLD, PRED, weights="quadratic") == pytest.approx(46 / 71)


def test_weighted_metrics_equal_metrics_of_the_resampled_items():
    """Bootstrap weights (draw counts) give exactly the metric of the items repeated that often."""
    w = np.array([[2, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 3, 0, 0, 2]], dtype=float)
    labels = [1, 2, 3, 4, 5]
    conf = m.weighted_confusion(w, GOLD, PRED, labels)
    for r in range(len(w)):
        g, p = np.repeat(GOLD, w[r].astype(int)), np.repeat(PRED, w[r].astype(int))
        assert m.weighted_accuracy(w, GOLD, PRED)[r] == pytest.approx(np.mean(g == p))
        assert m.macro_f1_from_confusion(conf)[r] == pytest.approx(
            f1_score(g, p, labels=labels, average="macro", zero_division=0)
        )
        assert m.qwk_from_confusion(conf)[r] == pytest.approx(
            cohen_kappa_score(g, p, labels=labels, weights="quadratic")
        )
    assert m.qwk_from_confusion(conf)[2] == 0.0  # everything predicted 2: no better than chance


def test_unparseable_predictions_leave_qwk_and_count_wrong_in_accuracy():
    pred = np.array([1, 2, -1, 5, 2])  # item 3 unparseable
    conf = m.weighted_confusion(np.ones((1, 5)), GOLD, pred, [1, 2, 3, 4, 5])
    assert conf.sum() == 4
    assert m.weighted_accuracy(np.ones((1, 5)), GOLD, pred)[0] == pytest.approx(3 / 5)
