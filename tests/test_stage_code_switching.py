"""Code-switching: the probe set, noun alignment by offsets (ja/zh/th have no spaces), the measures
against a brute-force per-item loop, activations against a batch-1 forward, and the script."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nu_artifacts import load_tiny, write_fake_nu

from langsae import code_switch, config, stats
from langsae.artifacts import config_hash
from langsae.cli import run_main
from langsae.config import build_parser, resolve
from langsae.data import PAPER_LANGUAGES
from langsae.features import load_nu_results
from langsae.forward import capture
from langsae.model import HookPoint
from langsae.stages import code_switching

LANGS = ["eng_Latn", "jpn_Jpan", "cmn_Hans", "tha_Thai"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_tiny(tiny_model_dir)


def test_probe_set_covers_the_ten_languages_with_consistent_offsets():
    ps = code_switch.load_probe_set()
    assert set(ps.languages) == set(PAPER_LANGUAGES) and len(ps.concepts) >= 5
    rows = [json.loads(line) for line in code_switch.PROBE_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(ps.concepts) * 10
    for r in rows:
        assert r["sentence"][r["noun_start"] : r["noun_end"]] == r["noun"] and r["noun_end"] == len(
            r["sentence"]
        )
    # a noun's translations differ from one another within an item (else Y's noun is X's noun)
    for nouns in ps.noun:
        assert len({n for lang, n in nouns.items() if lang not in ("spa_Latn", "por_Latn")}) == 8
    # no space before the noun where the language writes none
    for i in range(len(ps.concepts)):
        for lang in ("jpn_Jpan", "cmn_Hans", "tha_Thai"):
            assert not ps.prefix[i][lang].endswith(" ")


def test_bad_probe_file_is_refused(tmp_path):
    row = {
        "item": 0,
        "concept": "x",
        "gloss_en": "x",
        "lang": "eng_Latn",
        "sentence": "a dog",
        "prefix": "a ",
        "noun": "dog",
        "noun_start": 1,
        "noun_end": 5,
    }
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(code_switch.UserError, match="offsets"):
        code_switch.load_probe_set(path)
    path.write_text(json.dumps({**row, "noun_start": 2}) + "\n")
    with pytest.raises(code_switch.UserError, match="no fra_Latn"):
        code_switch.load_probe_set(path, ["eng_Latn", "fra_Latn"])


def test_overlapping_tokens_by_hand():
    # "ab|cd" with the noun "cd" at 2..4; (1, 3) straddles; (0, 0) is a special token
    assert code_switch.overlapping_tokens([(0, 0), (0, 1), (1, 3), (3, 4)], 2, 4) == [2, 3]
    assert code_switch.overlapping_tokens([(0, 0), (0, 2), (2, 4)], 2, 4) == [2]
    assert code_switch.overlapping_tokens([(0, 2), (2, 2)], 2, 4) == []


@pytest.mark.parametrize("lang", ["jpn_Jpan", "cmn_Hans", "tha_Thai", "kor_Hang", "arb_Arab"])
def test_offset_alignment_finds_the_noun_without_spaces(tiny, lang):
    """On a byte-level BPE (multi-byte characters split across tokens), the noun tokens found by offsets
    decode to exactly the noun, the tokens before them to exactly the prefix, in every prefix language."""
    _, tok = tiny
    ps = code_switch.load_probe_set()
    probes = [p for p in code_switch.build_probes(ps) if p.noun_lang == lang]
    tokens = code_switch.tokenize_probes(tok, probes)
    for p, ids, pos, straddles in zip(probes, tokens.token_ids, tokens.noun_positions, tokens.straddles):
        assert (
            pos == list(range(pos[0], len(ids))) and pos[0] >= 1
        )  # the noun ends the text, never at position 0
        noun = tok.decode(ids[pos[0] :])
        if (
            straddles
        ):  # a token spans the prefix's end and the noun's start: it counts, with its extra characters
            assert noun.endswith(ps.noun[p.item][lang]) and p.text.endswith(noun)
            continue
        assert noun.strip() == ps.noun[p.item][lang]
        if p.alone:  # the neutral start, then nothing but the noun's tokens
            assert ids[0] == tok.convert_tokens_to_ids("<|endoftext|>") and pos[0] == 1
        else:
            assert tok.decode(ids[: pos[0]]) + noun == p.text


def test_offset_alignment_counts_a_straddling_token():
    """A tokenizer whose vocabulary merges the prefix's last character with the noun's first: the straddling
    token is a noun token and is flagged."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "我": 1, "烤面": 2, "包": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("我|烤面|包"), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    probe = code_switch.Probe(0, "cmn_Hans", "cmn_Hans", "我烤面包", 3, 4)  # noun "包" after "我烤面"
    tokens = code_switch.tokenize_probes(
        tok, [probe, code_switch.Probe(0, "cmn_Hans", "cmn_Hans", "我烤面包", 2, 4)]
    )
    assert tokens.token_ids[0] == [1, 2, 3]
    assert tokens.noun_positions == [[2], [1, 2]] and tokens.straddles == [False, True]
    # cut alone: the neutral start (id 0 here) + the straddling token as it is, not "面包" retokenised
    cut = code_switch.Probe(0, "cmn_Hans", "cmn_Hans", "我烤面包", 2, 4, alone=True)
    alone = code_switch.tokenize_probes(tok, [cut])
    assert alone.token_ids == [[0, 2, 3]] and alone.noun_positions == [[1, 2]] and alone.straddles == [True]


def _noun_ids_from_text(tok, text, noun_start):
    """Brute force: tokenise the text, keep every token that ends after the noun starts (the noun ends the
    text)."""
    enc = tok(text, return_offsets_mapping=True)
    return [i for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if e > s and e > noun_start]


def _readers(probes, languages, n_items):
    """{(case, item, column): probes whose activations that cell of per_item_values reads}, found by
    giving one probe at a time activation 1 in every column: independent of how the code pairs texts."""
    out = {}
    for j in range(len(probes)):
        acts = np.zeros((len(probes), len(languages)))
        acts[j] = 1.0
        for case, v in code_switch.per_item_values(acts, probes, languages, n_items).items():
            for i, k in zip(*np.nonzero(v)):
                out.setdefault((case, i, k), []).append(j)
    return out


def test_every_prefixed_minus_alone_pair_holds_identical_noun_ids_with_qwen3(qwen3_tok):
    """Qwen3's real tokenizer, the whole probe set: for every cell of every "after prefix − alone" contrast
    (and the figure's same-noun pairs), the prefixed texts read and the alone texts read hold the same
    multiset of noun token ids, each alone text being the neutral start + nothing but noun ids."""
    ps = code_switch.load_probe_set()
    probes = code_switch.build_probes(ps)
    tokens = code_switch.tokenize_probes(qwen3_tok, probes)
    eot = qwen3_tok.convert_tokens_to_ids("<|endoftext|>")
    noun_ids = []
    for p, ids, pos in zip(probes, tokens.token_ids, tokens.noun_positions):
        if p.alone:  # what runs: the start, then the noun's tokens, all of them noun positions
            assert ids[0] == eot and pos == list(range(1, len(ids)))
            noun_ids.append(tuple(ids[1:]))
        else:
            assert [ids[q] for q in pos] == _noun_ids_from_text(qwen3_tok, p.text, p.noun_start)
            noun_ids.append(tuple(_noun_ids_from_text(qwen3_tok, p.text, p.noun_start)))
    readers = _readers(probes, ps.languages, len(ps.concepts))
    pairs = [(a, b) for _, a, b in code_switch.CONTRASTS.values() if "alone" in b]
    pairs += [("same_noun_after_prefix", "same_noun_alone"), ("own_noun_after_own_prefix", "own_noun_alone")]
    assert {b for _, b in pairs} >= {"other_nouns_alone", "own_noun_alone_as_after_foreign_prefix"}
    for a, b in pairs:
        for i in range(len(ps.concepts)):
            for k in range(len(ps.languages)):
                pre, alone = readers[a, i, k], readers[b, i, k]
                assert not any(probes[j].alone for j in pre) and all(probes[j].alone for j in alone)
                assert len(pre) == len(alone) and len(pre) in (1, len(ps.languages) - 1)
                assert sorted(noun_ids[j] for j in pre) == sorted(noun_ids[j] for j in alone), (a, b, i, k)


def test_the_old_alone_text_tokenises_the_noun_differently_with_qwen3(qwen3_tok):
    """Why alone texts are cut from ids: "… closed the 窗户" ends in `Ġç ª Ĺ æĪ·`, "窗户" tokenised
    alone (the noun with its own sentence's whitespace, none in Chinese) is `çªĹæĪ·`. The cut text matches."""
    ps = code_switch.load_probe_set()
    i = ps.concepts.index("window")
    prefix, noun = ps.prefix[i]["eng_Latn"], ps.noun[i]["cmn_Hans"]
    assert prefix.endswith("closed the ") and noun == "窗户"
    after = _noun_ids_from_text(qwen3_tok, prefix + noun, len(prefix))
    old = _noun_ids_from_text(qwen3_tok, noun, 0)
    assert qwen3_tok.convert_ids_to_tokens(after) == ["Ġç", "ª", "Ĺ", "æĪ·"]
    assert qwen3_tok.convert_ids_to_tokens(old) == ["çªĹæĪ·"]
    end = len(prefix) + len(noun)
    probe = code_switch.Probe(i, "eng_Latn", "cmn_Hans", prefix + noun, len(prefix), end, alone=True)
    assert code_switch.tokenize_probes(qwen3_tok, [probe]).token_ids[0][1:] == after


def _brute_force_cases(acts, probes, languages, n_items):
    K = len(languages)
    find = {(p.item, p.prefix_lang, p.noun_lang, p.alone): j for j, p in enumerate(probes)}
    out = {c: np.zeros((n_items, K)) for cases in code_switch.CASES.values() for c in cases}
    for i in range(n_items):
        for k, x in enumerate(languages):
            others = [y for y in languages if y != x]
            out["same_noun_after_prefix"][i, k] = acts[find[i, x, x, False], k]
            out["other_nouns_after_prefix"][i, k] = np.mean([acts[find[i, x, y, False], k] for y in others])
            out["same_noun_alone"][i, k] = acts[find[i, x, x, True], k]
            out["other_nouns_alone"][i, k] = np.mean([acts[find[i, x, y, True], k] for y in others])
            out["own_noun_after_own_prefix"][i, k] = acts[find[i, x, x, False], k]
            out["own_noun_after_foreign_prefix"][i, k] = np.mean(
                [acts[find[i, y, x, False], k] for y in others]
            )
            out["own_noun_alone"][i, k] = acts[find[i, x, x, True], k]
            foreign_cut = [acts[find[i, y, x, True], k] for y in others]  # x's noun as cut after y's prefix
            out["own_noun_alone_as_after_foreign_prefix"][i, k] = np.mean(foreign_cut)
    return out


def test_measures_equal_a_brute_force_per_item_loop():
    ps = code_switch.load_probe_set(languages=LANGS)
    probes = code_switch.build_probes(ps)
    n = len(ps.concepts)
    rng = np.random.default_rng(0)
    acts = {L: rng.random((len(probes), len(LANGS))) for L in (0, 3)}
    values = {L: code_switch.per_item_values(a, probes, LANGS, n) for L, a in acts.items()}
    for L, a in acts.items():
        ref = _brute_force_cases(a, probes, LANGS, n)
        for case, v in ref.items():
            np.testing.assert_allclose(values[L][case], v, err_msg=case)
    m = code_switch.measures(values, LANGS, seed=0, n_boot=200)
    for li, L in enumerate(m.layers):
        for case, v in _brute_force_cases(acts[L], probes, LANGS, n).items():
            np.testing.assert_allclose(m.by_name[case].point[:, li], v.mean(0))
        for name, (_, a, b) in code_switch.CONTRASTS.items():
            np.testing.assert_allclose(
                m.by_name[name].point[:, li], values[L][a].mean(0) - values[L][b].mean(0)
            )
    # the heatmap: X's (Y's) feature on Y's noun after X's prefix, by hand for one pair and item
    pairs = code_switch.pair_matrices(acts[3], probes, LANGS, n)
    j = next(
        j for j, p in enumerate(probes) if (p.item, p.prefix_lang, p.noun_lang) == (2, "tha_Thai", "jpn_Jpan")
    )
    assert (
        pairs["prefix_feature"][2, 3, 1] == acts[3][j, 3] and pairs["noun_feature"][2, 3, 1] == acts[3][j, 1]
    )
    rows = code_switch.heatmap_rows(pairs, LANGS, 3, seed=0, n_boot=200)
    r = next(
        r
        for r in rows
        if (r["measure"], r["prefix_lang"], r["noun_lang"]) == ("noun_feature", "tha_Thai", "jpn_Jpan")
    )
    assert (
        r["value"] == pytest.approx(pairs["noun_feature"][:, 3, 1].mean())
        and r["ci_low"] <= r["value"] <= r["ci_high"]
    )


def test_effect_layer_finds_a_planted_peak():
    ps = code_switch.load_probe_set(languages=LANGS)
    probes = code_switch.build_probes(ps)
    rng = np.random.default_rng(1)
    acts = {L: rng.random((len(probes), len(LANGS))) * 0.1 for L in range(3)}
    for j, p in enumerate(probes):  # at layer 1, X's feature fires on every noun after X's prefix
        if not p.alone:
            acts[1][j, LANGS.index(p.prefix_lang)] += 1.0
    values = {L: code_switch.per_item_values(a, probes, LANGS, len(ps.concepts)) for L, a in acts.items()}
    best, wins = code_switch.effect_layer(code_switch.measures(values, LANGS, seed=0, n_boot=200))
    assert best == 1 and wins[1] == 1.0


@pytest.fixture(scope="module")
def fake_nu(tiny_args, tiny_transcoders, tmp_path_factory):
    out = tmp_path_factory.mktemp("code_switch") / "run"
    cfg = resolve(
        build_parser("t").parse_args([*tiny_args, "--out-dir", str(out), "--languages", ",".join(LANGS)])
    )
    write_fake_nu(out, cfg.describe(), tiny_transcoders, LANGS)
    return cfg


def test_noun_activations_match_a_batch1_forward(tiny, fake_nu, tiny_transcoders):
    model, tok = tiny
    ps = code_switch.load_probe_set(languages=LANGS)
    probes = code_switch.build_probes(ps)[::7]  # prefixed and alone texts of several lengths
    probes += probes[-3:]  # repeated texts: run once, each gets the value
    tokens = code_switch.tokenize_probes(tok, probes)
    nu = load_nu_results(fake_nu, None, 1)
    feats = {L: [lf.top(lang, [1])[0] for lang in LANGS] for L, lf in nu.layers.items()}
    encoders = {L: nu.layers[L].encoder(f) for L, f in feats.items()}
    got = code_switch.noun_activations(model, tokens, encoders, batch_size=5, pad_id=tok.pad_token_id)
    for L, w in tiny_transcoders.items():
        for j, (ids, pos) in enumerate(zip(tokens.token_ids, tokens.noun_positions)):
            with capture(model, {"x": HookPoint(L, "mlp", "input")}) as store, torch.no_grad():
                model(torch.tensor([ids]))
            x = store["x"][0, pos]  # the MLP input: what a transcoder reads
            ref = torch.relu(x @ w["W_enc"][feats[L]].T + w["b_enc"][feats[L]]).mean(0)
            torch.testing.assert_close(got[L][j], ref, atol=1e-5, rtol=1e-4)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_script_end_to_end_resumes_and_recomputes_from_items(
    tiny_args, fake_nu, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "output")
    argv = [
        *tiny_args,
        "--out-dir",
        str(fake_nu.features_dir),
        "--languages",
        ",".join(LANGS),
        "--batch-size",
        "16",
    ]
    assert code_switching.main(argv) == {"computed": 3, "cached": 0, "unit": "layer"}
    fdir = fake_nu.features_dir
    results, items = (
        _read_csv(fdir / "code_switching_results.csv"),
        _read_csv(fdir / "code_switching_items.csv"),
    )
    n_items = len(code_switch.load_probe_set().concepts)
    n_cases = sum(len(c) for c in code_switch.CASES.values()) + len(code_switch.CONTRASTS)
    assert len(results) == 3 * n_cases * (len(LANGS) + 1)
    # a number of the results table, recomputed by hand from the per-text table
    L, x = "2", "cmn_Hans"
    per_item = [
        np.mean(
            [
                float(r["activation"])
                for r in items
                if r["layer"] == L
                and r["item"] == str(i)
                and r["prefix_lang"] == x
                and r["noun_lang"] != x
                and r["feature_lang"] == x
                and r["text"] == "after_prefix"
            ]
        )
        for i in range(n_items)
    ]
    row = next(
        r for r in results if (r["layer"], r["case"], r["language"]) == (L, "other_nouns_after_prefix", x)
    )
    assert float(row["value"]) == pytest.approx(np.mean(per_item), rel=1e-4)
    assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]) and row["n_items"] == str(
        n_items
    )
    # the paper's contrast from the per-text table: each prefixed row minus the alone row cut from the same
    # (item, prefix_lang, noun_lang), which holds the same noun token ids
    at = [r for r in items if r["layer"] == L and r["feature_lang"] == x]
    rows = {(r["text"], r["item"], r["prefix_lang"], r["noun_lang"]): r for r in at}
    diffs = []
    for (text, i, px, y), r in rows.items():
        if text == "after_prefix" and px == x and y != x:
            alone = rows["alone", i, px, y]
            assert alone["noun_token_ids"] == r["noun_token_ids"]
            diffs.append(float(r["activation"]) - float(alone["activation"]))
    row = next(r for r in results if (r["layer"], r["case"], r["language"]) == (L, code_switch.EFFECT, x))
    assert len(diffs) == n_items * (len(LANGS) - 1)
    assert float(row["value"]) == pytest.approx(np.mean(diffs), rel=1e-4)
    meta = json.loads((fdir / "code_switching_meta.json").read_text())
    # the meta names its stage, the cache key of its settings, how its intervals were drawn and its figures
    run_cfg = resolve(build_parser("t").parse_args(argv))
    assert meta["stage"] == code_switching.STAGE.name == "code-switching"
    assert code_switching.STAGE.meta == "code_switching_meta.json"
    assert meta["config_hash"] == config_hash(meta["settings"])
    resampling = "items with replacement, one draw shared by all languages and layers"
    drawn = {"n_boot": stats.N_BOOT, "alpha": stats.ALPHA, "interval": "percentile", "seed": run_cfg.seed}
    assert meta["bootstrap"] == {**drawn, "resampling": resampling}
    stems = ("prefix_feature", "noun_feature", "heatmap")
    expected = {f"code_switching_{s}.{ext}" for s in stems for ext in ("png", "pdf")}
    assert {Path(f).name for f in meta["figures"]} == expected
    assert set(meta["outputs"]) == {f"code_switching_{n}.csv" for n in ("items", "results", "heatmap")}
    for name, record in meta["outputs"].items():  # the records of the files the report reads
        data = (fdir / name).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert meta["heatmap_layer"] in (0, 1, 2) and meta["features"]["2"][x] == int(row["feature"])
    assert len(_read_csv(fdir / "code_switching_heatmap.csv")) == 2 * len(LANGS) ** 2
    figures = resolve(build_parser("t").parse_args(argv)).output_dir  # wherever the run's config puts them
    for name in (
        "code_switching_prefix_feature.png",
        "code_switching_noun_feature.pdf",
        "code_switching_heatmap.png",
    ):
        assert (figures / name).stat().st_size > 1000, name

    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(code_switch, "noun_activations", fail)
    assert code_switching.main(argv) == {"computed": 0, "cached": 3, "unit": "layer"}
    assert _read_csv(fdir / "code_switching_results.csv") == results


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--languages", "eng_Latn,glg_Latn"], "code switching needs two of --languages in the probe set"),
        (["--rank", "4"], "--top-k 4 is out of range"),
        (["--rank", "0"], "--rank must be at least 1"),
        (["--layers", "9"], "out of range"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_args, fake_nu, capsys, extra, message):
    argv = [*tiny_args, "--out-dir", str(fake_nu.features_dir), "--languages", ",".join(LANGS), *extra]
    assert run_main(code_switching.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_probe_languages_are_those_every_item_has(tmp_path):
    assert code_switch.probe_languages() == tuple(sorted(PAPER_LANGUAGES))
    rows = [
        json.loads(line)
        for line in code_switch.PROBE_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    short = tmp_path / "probes.jsonl"  # item 0 without Korean
    short.write_text(
        "".join(
            json.dumps(r, ensure_ascii=False) + "\n"
            for r in rows
            if not (r["item"] == rows[0]["item"] and r["lang"] == "kor_Hang")
        )
    )
    assert code_switch.probe_languages(short) == tuple(sorted(set(PAPER_LANGUAGES) - {"kor_Hang"}))


def test_a_layer_another_live_process_holds_is_waited_for_and_read(tiny_args, fake_nu, tmp_path, monkeypatch):
    """Claims (langsae.units): this run computes only the layers it can claim, in one forward, and reads the
    layer a live other process holds once that one has written it; the results are those of one run."""
    import os
    import shutil
    import threading

    from langsae import units

    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "output")
    monkeypatch.setattr(units, "POLL_S", 0.05)
    fdir, cdir = fake_nu.features_dir, fake_nu.features_dir / "code_switching"
    argv = [*tiny_args, "--out-dir", str(fdir), "--languages", ",".join(LANGS), "--batch-size", "16"]
    code_switching.main(argv)  # every layer cached (made here or by an earlier test)
    reference = (fdir / "code_switching_results.csv").read_bytes()
    aside = tmp_path / "layer_1"
    shutil.copytree(cdir, aside)
    shutil.rmtree(cdir)
    claim = units.claim_file(cdir, "layer_1")
    claim.parent.mkdir()
    other = {"host": units.socket.gethostname(), "pid": os.getppid(), "started": 0.0, "token": "other"}
    claim.write_text(json.dumps(other))  # our parent: a live process on this host

    def other_process_finishes():
        threading.Event().wait(1.0)
        for name in ("layer_1.pt", "layer_1_done.json"):
            shutil.copy(aside / name, cdir / name)
        claim.unlink()

    seen, real = [], code_switch.noun_activations
    monkeypatch.setattr(
        code_switch, "noun_activations", lambda m, t, enc, *a: seen.append(sorted(enc)) or real(m, t, enc, *a)
    )
    threading.Thread(target=other_process_finishes).start()
    assert code_switching.main(argv) == {"computed": 2, "cached": 1, "unit": "layer"}
    assert seen == [[0, 2]], "one forward, for the layers this run held"
    assert (fdir / "code_switching_results.csv").read_bytes() == reference
    assert not list(cdir.glob("*.claim"))
