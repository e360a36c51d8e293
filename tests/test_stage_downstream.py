"""The downstream stage: its sampler, controls and data paths, and the stage end to end on the toy."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_nu

from langsae import downstream, tasks
from langsae.cli import run_main
from langsae.config import build_parser, resolve
from langsae.errors import UserError
from langsae.stages import downstream as downstream_ablation
from langsae.stats import ALPHA, N_BOOT, Resampled

TOY = ["--model", "toy"]


def test_stratified_sample_exact_counts_and_seeded():
    labels = [1] * 10 + [2] * 7 + [3] * 9 + [4] * 5 + [5] * 12  # sorted by label, as the Amazon files are
    idx = tasks.stratified_sample(labels, 5, seed=3)
    got = [labels[i] for i in idx]
    assert [got.count(c) for c in tasks.RATINGS] == [5] * 5 and len(set(idx)) == 25
    assert idx == tasks.stratified_sample(labels, 5, seed=3)
    assert idx != tasks.stratified_sample(labels, 5, seed=4)
    assert idx[:5] != list(range(5)) or idx[5:10] != list(range(10, 15))  # not simply the first rows
    with pytest.raises(UserError, match="class 4 has only 5"):
        tasks.stratified_sample(labels, 6, seed=0)


def test_cross_language_from_interaction_matrix(tmp_path):
    nu_langs = ["eng_Latn", "spa_Latn", "cmn_Hans", "arb_Arab"]
    path = tmp_path / "interaction_clusters.json"
    assert downstream.cross_language("spa_Latn", nu_langs, path) == "eng_Latn"  # no file: English
    assert downstream.cross_language("eng_Latn", nu_langs, path) == "cmn_Hans"  # ... or Chinese for English
    path.write_text(
        json.dumps(
            {
                "languages": ["eng_Latn", "spa_Latn", "cmn_Hans", "arb_Arab", "kor_Hang"],
                "distance": [
                    [0, 1, 3, 2, 9],
                    [1, 0, 2, 5, 9],
                    [3, 2, 0, 4, 9],
                    [2, 5, 4, 0, 9],
                    [9, 9, 9, 9, 0],
                ],
            }
        )
    )
    assert (
        downstream.cross_language("eng_Latn", nu_langs, path) == "cmn_Hans"
    )  # 3; kor is farther but not in the nu run
    assert downstream.cross_language("spa_Latn", nu_langs, path) == "arb_Arab"
    assert downstream.cross_language("arb_Arab", nu_langs, path) == "spa_Latn"


def test_cross_language_ignores_a_stage3_file_of_another_run(tmp_path, caplog):
    nu_langs = ["eng_Latn", "spa_Latn", "cmn_Hans", "arb_Arab"]
    path = tmp_path / "interaction_clusters.json"
    store = {"model": "sha256:m", "sae_release": "r", "nu_config_hash": "h1"}
    path.write_text(
        json.dumps(
            {
                "languages": nu_langs,
                "distance": [[0, 1, 3, 2], [1, 0, 2, 5], [3, 2, 0, 4], [2, 5, 4, 0]],
                "settings": {"store": store},
            }
        )
    )
    assert downstream.cross_language("spa_Latn", nu_langs, path, {**store, "dtype": "float32"}) == "arb_Arab"
    assert (
        downstream.cross_language("spa_Latn", nu_langs, path, {**store, "nu_config_hash": "h2"}) == "eng_Latn"
    )
    assert "nu_config_hash" in caplog.text


def _task(ids_by_lang):
    items = {lang: [tasks.Item(id=i, prompt="", gold="") for i in ids] for lang, ids in ids_by_lang.items()}
    return downstream.TaskResults("qa", list(items), items, {}, {})


def test_bootstrap_is_joint_for_parallel_items_and_per_language_otherwise():
    w = downstream.bootstrap_weights(
        _task({"eng_Latn": ["a", "b", "c"], "spa_Latn": ["a", "b", "c"]}), seed=0, n_boot=50
    )
    assert np.array_equal(w["eng_Latn"], w["spa_Latn"])  # one draw of ids for both: paired across languages
    w = downstream.bootstrap_weights(
        _task({"eng_Latn": ["e1", "e2", "e3"], "spa_Latn": ["s1", "s2", "s3", "s4"]}), seed=0, n_boot=50
    )
    assert (w["eng_Latn"].sum(axis=1) == 3).all() and (
        w["spa_Latn"].sum(axis=1) == 4
    ).all()  # each replicate keeps n


def test_own_drop_exceeds_random_needs_a_drop():
    def flat(v):
        return Resampled(np.array(v), np.full(200, v) + np.linspace(-0.01, 0.01, 200))

    at = [
        downstream.Condition(downstream.OWN, 3, "eng_Latn"),
        downstream.Condition(downstream.CROSS, 3, "spa_Latn"),
    ]
    est = {at[0].unit("directional"): flat(0.5), at[1].unit("directional"): flat(0.5)}
    entry = downstream._summary_entry(
        "qa", "eng_Latn", 3, "f1", "squad", at, est, flat(0.5), flat(0.8), "directional"
    )
    assert (
        entry["own_minus_random"][2] < 0 and not entry["own_drop_exceeds_random"]
    )  # random rose, own did not fall
    est[at[0].unit("directional")] = flat(0.2)
    entry = downstream._summary_entry(
        "qa", "eng_Latn", 3, "f1", "squad", at, est, flat(0.5), flat(0.45), "directional"
    )
    assert entry["own_drop_exceeds_random"]


def test_xquad_is_parallel_and_keeps_the_bom():
    en, zh = tasks.read_xquad("eng_Latn"), tasks.read_xquad("cmn_Hans")
    assert len(en) == len(zh) == 1190 and [r["id"] for r in en] == [r["id"] for r in zh]
    assert any(r["context"].startswith("\ufeff") for lang in tasks.XQUAD for r in tasks.read_xquad(lang))


def test_qa_prompt_truncates_the_context_never_the_question(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    full = tasks.qa_items(tok, "eng_Latn", 3, 0, 100_000)
    short = tasks.qa_items(tok, "eng_Latn", 3, 0, 200)
    shot = tasks.qa_items(tok, "eng_Latn", 1, 1, 100_000)[0]
    rows = tasks.read_xquad("eng_Latn")
    for item, f, r in zip(short, full, rows):
        assert len(tok(item.prompt)["input_ids"]) <= 200
        assert item.prompt.endswith(f"Question: {r['question']}\nAnswer:") and item.meta["truncated"]
        assert r["context"] in f.prompt and not f.meta["truncated"]
    example = next(r for r in rows if r["article"] == 1)  # the first question of the next article
    assert shot.prompt.index(example["context"]) < shot.prompt.index(rows[0]["context"])
    assert f"Question: {example['question']}\nAnswer: {example['answers'][0]}\n\n" in shot.prompt


def _synthetic_amazon(tmp_path, monkeypatch, config: str, n_per_star: int):
    """Fake reviews (never real ones) as a parquet file, prepared by `datasets` into the cache layout
    that `load_dataset("mteb/AmazonReviewsClassification", config)` reads when offline. The cache is
    this test's own: in the session's cache the 3-per-star copy would reach later tests (the
    pipeline test would then run sentiment on it and stop at `--n-per-label`)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [lab for lab in range(5) for _ in range(n_per_star)]  # 0-4, sorted as the real files
    texts = [
        f"Synthetic review {i}: this product is {'bad' if lab < 2 else 'fine' if lab == 2 else 'good'}."
        for i, lab in enumerate(labels)
    ]
    pq.write_table(
        pa.table({"id": [f"s{i}" for i in range(len(labels))], "text": texts, "label": labels}),
        tmp_path / "test.parquet",
    )
    builder = datasets.load_dataset_builder(
        "parquet", data_files={"test": str(tmp_path / "test.parquet")}, cache_dir=str(tmp_path / "build")
    )
    builder.download_and_prepare()
    (prepared,) = [p.parent for p in (tmp_path / "build").rglob("dataset_info.json")]
    dst = (
        Path(datasets.config.HF_DATASETS_CACHE)
        / "mteb___amazon_reviews_classification"
        / config
        / "0.0.0"
        / prepared.name
    )
    shutil.copytree(prepared, dst)
    (dst_arrow,) = list(dst.glob("*-test.arrow"))
    dst_arrow.rename(dst / "amazon_reviews_classification-test.arrow")
    info = json.loads((dst / "dataset_info.json").read_text())
    (dst / "dataset_info.json").write_text(
        json.dumps({**info, "config_name": config, "dataset_name": "amazon_reviews_classification"})
    )
    return texts, [lab + 1 for lab in labels]


def test_amazon_loads_offline_through_load_dataset(tmp_path, monkeypatch):
    texts, stars = _synthetic_amazon(tmp_path, monkeypatch, "en", 3)
    assert tasks.load_amazon("eng_Latn") == (texts, stars)
    with pytest.raises(tasks.DatasetUnavailable, match="mteb/AmazonReviewsClassification.*'fr'"):
        tasks.load_amazon("fra_Latn")


@pytest.fixture(scope="module")
def toy_run(small_toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_downstream")
    assert run_nu(TOY, out) == 0
    return out


def _stage(out, *flags):
    return downstream_ablation.main(
        [*TOY, "--out-dir", str(out), "--layers", "1", "--max-new-tokens", "4", *flags]
    )


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_stage_on_toy_qa_and_topic(toy_run):
    flags = [
        "--tasks",
        "qa,topic",
        "--languages",
        "eng_Latn,cmn_Hans",
        "--n-items",
        "4",
        "--n-topic-items",
        "5",
        "--random-draws",
        "2",
    ]
    first = _stage(toy_run, *flags)
    n_units = 2 * 2 * (1 + 1 + 2 + 1)  # tasks x languages x (baseline, own, 2 random, cross)
    assert first == {"computed": n_units, "cached": 0, "unit": "(task, language, layer, condition)"}
    rows = _rows(toy_run / "downstream_results.csv")
    assert list(rows[0]) == downstream.RESULTS_COLUMNS
    qa_en = [r for r in rows if r["task"] == "qa" and r["lang"] == "eng_Latn" and r["metric"] == "f1"]
    assert {(r["condition"], r["quantity"], r["draw"]) for r in qa_en} == {
        ("baseline", "value", ""),
        ("own", "value", ""),
        ("own", "delta", ""),
        ("cross", "value", ""),
        ("cross", "delta", ""),
        ("random", "value", "0"),
        ("random", "delta", "0"),
        ("random", "value", "1"),
        ("random", "delta", "1"),
        ("random", "value", ""),
        ("random", "delta", ""),
    }
    assert next(r for r in qa_en if r["condition"] == "cross")["ablated_lang"] == "cmn_Hans"
    # every number can be recomputed from the per-item files
    folder = toy_run / "downstream" / "qa" / "eng_Latn"
    for r in qa_en:
        if r["quantity"] == "value" and r["draw"] == "" and r["condition"] != "random":
            unit = "baseline" if r["condition"] == "baseline" else f"L1_directional_{r['condition']}"
            recs = [json.loads(line) for line in open(folder / f"{unit}.jsonl")]
            assert (
                float(r["value"]) == pytest.approx(np.mean([x["f1"] for x in recs]), abs=1e-6)
                and int(r["n"]) == 4
            )
            assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])
    base = [json.loads(line) for line in open(folder / "baseline.jsonl")]
    own = [json.loads(line) for line in open(folder / "L1_directional_own.jsonl")]
    delta = next(r for r in qa_en if r["condition"] == "own" and r["quantity"] == "delta")
    assert float(delta["value"]) == pytest.approx(
        np.mean([o["f1"] - b["f1"] for o, b in zip(own, base)]), abs=1e-6
    )
    topic = [
        json.loads(line) for line in open(toy_run / "downstream" / "topic" / "cmn_Hans" / "baseline.jsonl")
    ]
    assert (
        len(topic) == 5
        and len(topic[0]["loglik"]) == 7
        and topic[0]["pred_loglik"] == max(topic[0]["loglik"], key=topic[0]["loglik"].get)
    )
    summary = json.loads((toy_run / "downstream_summary.json").read_text())
    assert summary["rule"] == downstream.SUMMARY_RULE
    assert {(e["task"], e["metric"]) for e in summary["entries"]} == {
        ("qa", "em"),
        ("qa", "f1"),
        ("qa", "lang_f1"),
        ("topic", "accuracy"),
        ("topic", "macro_f1"),
    }
    assert all(isinstance(e["own_drop_exceeds_random"], bool) for e in summary["entries"])
    assert (toy_run / "figures" / "downstream_qa_L1.png").exists()
    # resumable: nothing is recomputed, and the table is the same
    assert _stage(toy_run, *flags) == {
        "computed": 0,
        "cached": n_units,
        "unit": "(task, language, layer, condition)",
    }
    assert _rows(toy_run / "downstream_results.csv") == rows


def test_stage_sentiment_on_toy_with_synthetic_amazon(toy_run, tmp_path, capsys, monkeypatch):
    _synthetic_amazon(tmp_path, monkeypatch, "es", 3)
    flags = ["--tasks", "sentiment", "--languages", "spa_Latn", "--n-per-label", "2", "--random-draws", "1"]
    assert _stage(toy_run, *flags)["computed"] == 4
    recs = [
        json.loads(line)
        for line in open(toy_run / "downstream" / "sentiment" / "spa_Latn" / "baseline.jsonl")
    ]
    assert sorted(r["gold"] for r in recs) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert all(set(r["loglik"]) == {"1", "2", "3", "4", "5"} and "raw" in r and "parsed" in r for r in recs)
    rows = _rows(toy_run / "downstream_results.csv")
    unparseable = next(r for r in rows if r["metric"] == "unparseable_rate" and r["condition"] == "baseline")
    assert float(unparseable["value"]) == pytest.approx(np.mean([r["parsed"] is None for r in recs]))
    assert {(r["metric"], r["scoring"]) for r in rows} == set(downstream.METRICS["sentiment"])
    # a language whose reviews are not cached: one line naming the dataset, or a notice with
    # --skip-unavailable
    argv = [
        *TOY,
        "--out-dir",
        str(toy_run),
        "--layers",
        "1",
        "--tasks",
        "sentiment",
        "--languages",
        "fra_Latn",
    ]
    assert run_main(downstream_ablation.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "error: the sentiment task needs mteb/AmazonReviewsClassification at revision "
        f"{tasks.AMAZON_REVISION} ('fr'"
    )
    with pytest.raises(tasks.DatasetUnavailable):
        downstream_ablation.main(argv)
    assert downstream_ablation.main([*argv, "--skip-unavailable"])["computed"] == 0
    # Spanish cached, French not: the task runs in Spanish and the meta names what was skipped
    both = [
        *flags[:3],
        "spa_Latn,fra_Latn",
        *flags[-4:],
        "--skip-unavailable",
    ]  # the first run's flags, with French
    assert _stage(toy_run, *both) == {
        "computed": 0,
        "cached": 4,
        "unit": "(task, language, layer, condition)",
    }
    meta = json.loads((toy_run / "downstream_meta.json").read_text())
    assert meta["languages"] == {"sentiment": ["spa_Latn"]} and list(meta["skipped_tasks"]["sentiment"]) == [
        "fra_Latn"
    ]
    # the meta names its stage, its layer rule, how its intervals were drawn and its figures
    assert meta["stage"] == downstream_ablation.STAGE.name == "downstream"
    assert downstream_ablation.STAGE.meta == "downstream_meta.json" and meta["layer_rule"] == "--layers"
    items = "items with replacement; XQuAD and SIB-200 ids jointly across languages"
    assert meta["bootstrap"] == {
        "n_boot": N_BOOT,
        "alpha": ALPHA,
        "interval": "percentile",
        "seed": 0,
        "resampling": f"{items}, Amazon reviews per language; deltas paired by item",
        "random_control": "mean over draws; its CI resamples draws as well as items",
    }
    figures = {Path(f).name for f in meta["figures"]}
    assert figures == {f"downstream_sentiment_L1.{ext}" for ext in ("png", "pdf")}


def test_default_layer_rule(tmp_path):
    args = build_parser("x").parse_args([*TOY, "--out-dir", str(tmp_path)])
    cfg = resolve(args)
    with pytest.raises(UserError, match="reproduce_figures_section5.py --model toy"):
        downstream_ablation.default_layers(cfg, "directional")
    (tmp_path / "section5_summary.csv").write_text(
        "language,peak_layer\neng_Latn,2\nspa_Latn,1\nfra_Latn,2\njpn_Jpan,1\nkor_Hang,3\n"
    )
    assert downstream_ablation.default_layers(cfg, "directional") == (1,)  # 1 and 2 tie: the lowest
    qwen = resolve(build_parser("x").parse_args(["--out-dir", str(tmp_path)]))
    assert downstream_ablation.default_layers(qwen, "directional") == (10,)


def test_run_units_recomputes_a_corrupt_unit_alone_and_waits_for_a_live_claim(tmp_path, monkeypatch):
    import threading
    import time
    from types import SimpleNamespace

    from langsae import units

    D = downstream
    store = units.UnitStore(tmp_path, {"s": 1})
    conds = [D.Condition(D.BASELINE), D.Condition(D.OWN, 1, "eng_Latn", (3, 4))]
    conds.append(D.Condition(D.RANDOM, 1, "none", (5, 6), 0))
    computed = []

    def fake_records(model, tok, task, lang, items, edits, eng):
        computed.append(list(edits))
        return [[{"id": it, "edit": str(e)} for it in items] for e in edits]

    monkeypatch.setattr(D, "make_ablation", lambda lf, ids, mode, dev: ids)
    monkeypatch.setattr(D, "compute_records", fake_records)
    monkeypatch.setattr(units, "POLL_S", 0.05)
    eng = D.EngineSettings(0, 1, 1, "cpu")

    def run():
        nu = SimpleNamespace(layers={1: None})
        return D.run_units(None, None, "qa", "eng_Latn", ["a", "b"], conds, nu, "m", store, {}, eng, False)

    first, n, cached = run()
    assert (n, cached) == (3, 0) and computed == [[None, (3, 4), (5, 6)]]
    own = tmp_path / "qa" / "eng_Latn" / f"{conds[1].unit('m')}.jsonl"
    own.write_text(own.read_text().replace('"a"', '"z"'))  # same size, other bytes
    computed.clear()
    again, n, cached = run()
    assert (n, cached) == (1, 2) and computed == [[(3, 4)]] and again == first

    # a unit claimed by a live process elsewhere is not computed here: its owner's result is read once saved
    rand = conds[2].unit("m")
    (tmp_path / "qa" / "eng_Latn" / f"{rand}.json").unlink()
    claim = store.claim_of("qa", "eng_Latn", rand)
    claim.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0.0, "token": "t"}))
    key = D.unit_key(store, "qa", "eng_Latn", conds[2], "m", {})

    def owner():
        time.sleep(0.3)
        store.save("qa", "eng_Latn", rand, key, [{"id": i, "edit": "theirs"} for i in "ab"], {})
        claim.unlink()

    threading.Thread(target=owner).start()
    computed.clear()
    out, n, cached = run()
    assert (n, cached) == (0, 3) and computed == [] and out[rand][0]["edit"] == "theirs"
