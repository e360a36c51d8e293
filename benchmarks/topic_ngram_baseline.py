"""Benchmark: how much topic signal the toy's topic lines carry, without the toy.

Per language, a character n-gram logistic regression (sklearn: TF-IDF of 1-4-grams within word
boundaries, then multinomial logistic regression) is trained on the sentences and labels of the toy's
topic task lines (`langsae.toy.task_text.topic_candidates`: SIB-200's train rows on FLORES devtest
sentences, 327 per language) and scored on the topic task's own items (SIB-200's dev and test rows
minus the nu selection set, `tasks.topic_items`), the items the toy's zero-shot topic accuracy is
measured on. A reference for what the training sentences allow, next to the toy's accuracy and the
share of the largest class (docs/toy_model.md, "Tasks on the toy").

    python benchmarks/topic_ngram_baseline.py

Prints a table and writes bench_results/topic_ngram_baseline.json (git-ignored). Seconds on 2 cores.
"""

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from langsae import tasks  # noqa: E402
from langsae.artifacts import save_json  # noqa: E402
from langsae.data import PAPER_LANGUAGES, load_texts, read_sib200, sib_id  # noqa: E402
from langsae.toy.task_text import topic_candidates  # noqa: E402


def language_result(lang: str, selection) -> dict:
    train = topic_candidates(lang)
    text_of = {sib_id(r.index_id): r.text for r in read_sib200(lang)}
    items = tasks.topic_items(lang, 0, 0, selection)
    gold = [it.gold for it in items]
    clf = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True),
        LogisticRegression(max_iter=2000),
    )
    clf.fit([r.text for r in train], [r.category for r in train])
    pred = clf.predict([text_of[it.id] for it in items])
    return {
        "n_train": len(train),
        "n_items": len(items),
        "accuracy": float(np.mean(pred == np.array(gold))),
        "largest_class_share": collections.Counter(gold).most_common(1)[0][1] / len(gold),
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--languages", default=",".join(PAPER_LANGUAGES), help="comma-separated FLORES codes")
    args = p.parse_args(argv)
    selection = load_texts(PAPER_LANGUAGES, "selection", -1)
    results = {lang: language_result(lang, selection) for lang in args.languages.split(",")}
    print(f"{'language':<10}{'train':>7}{'items':>7}{'accuracy':>10}{'largest class':>15}")
    for lang, r in results.items():
        print(
            f"{lang:<10}{r['n_train']:>7}{r['n_items']:>7}{r['accuracy']:>10.3f}{r['largest_class_share']:>15.3f}"
        )
    save_json(results, ROOT / "bench_results" / "topic_ngram_baseline.json")


if __name__ == "__main__":
    main()
