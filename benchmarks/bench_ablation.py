"""Benchmark: the ΔCE engine vs the straightforward approach, on a Qwen3-0.6B-shaped model.

A random-weight Qwen3ForCausalLM of the exact Qwen3-0.6B shape (28 layers, hidden 1024,
16 heads / 8 KV heads, head_dim 128, MLP 3072, vocab 151936, tied embeddings) and random
token ids stand in for the real model and texts: speed does not depend on the weights.
A Figure-5-style sweep (layers x languages x {top1, top1+2}, a few texts per language) runs
  engine:  langsae.sweep.run_sweep (baseline once per text; layer L's input once per batch;
           layers L..end per condition, conditions stacked into one forward; chunked CE)
  naive:   per condition and text, a full forward at batch 1 with the hook and another
           without it for the baseline (recomputed each time), CE from the full logits
and checks both give the same ΔCE. Also reported: the floor, i.e. the FLOPs the sweep cannot
avoid (one baseline forward per text, and layers L..end + LM head on the real tokens per
condition), as FLOPs and as time at the best throughput measured here.

    python benchmarks/bench_ablation.py [--layers 3,10,17,24] [--languages 2] [--texts-per-lang 1]
                                        [--threads 1]

Writes bench_results/bench_ablation.json (git-ignored) and prints a summary. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langsae import ablation, sweep  # noqa: E402
from langsae.artifacts import package_versions, save_json  # noqa: E402
from langsae.features import LayerFeatures, NuResults  # noqa: E402
from langsae.forward import edit_output, logits_from_hidden, make_batches, run_from_layer  # noqa: E402
from langsae.sweep import ConditionStore, EvalSet  # noqa: E402

LANGS = ["eng_Latn", "fra_Latn", "jpn_Jpan", "tha_Thai", "arb_Arab", "cmn_Hans"]
D_SAE = 163840


def qwen3_06b_shape():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=40960,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(cfg).eval()


def fake_nu(layers: list[int], languages: list[str], hidden: int) -> NuResults:
    """Random decoder directions for each language's top-2 features (what the nu stage would save)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for L in layers:
        feats = torch.randperm(D_SAE, generator=g)[: 2 * len(languages) + 8]
        top = feats[: 2 * len(languages)].view(len(languages), 2)
        fi = feats.sort().values
        out[L] = LayerFeatures(
            layer=L,
            hook_in=f"blocks.{L}.mlp.hook_in",
            hook_out=f"blocks.{L}.hook_mlp_out",
            d_sae=D_SAE,
            languages=tuple(languages),
            top_indices=top,
            control_indices=feats[2 * len(languages) :].sort().values,
            feature_indices=fi,
            W_dec=torch.randn(len(fi), hidden, generator=g) * 0.05,
            W_enc=torch.randn(len(fi), hidden, generator=g) / hidden**0.5,
            b_enc=torch.zeros(len(fi)),
            threshold=None,
        )
    return NuResults({}, tuple(languages), out, 2)


# ----------------------------------------------------------------------------- FLOP accounting


def layer_flops(cfg, tokens: int, width: int) -> float:
    """One decoder layer on `tokens` tokens of rows padded to `width` (matmuls + attention scores)."""
    d, h, kv, hd, ff = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    weights = d * h * hd * 2 + d * kv * hd * 2 + 3 * d * ff
    return 2 * tokens * weights + 4 * tokens * h * hd * width


def head_flops(cfg, tokens: int) -> float:
    return 2 * tokens * cfg.hidden_size * cfg.vocab_size


def count_flops(cfg, lengths: list[int], conditions, batches, max_rows: int) -> dict:
    n_layers = cfg.num_hidden_layers
    floor = sum(
        n_layers * layer_flops(cfg, n, n) + head_flops(cfg, n - 1) for n in lengths
    )  # baseline, once per text
    naive = 0.0
    for c in conditions:
        for n in lengths:
            floor += (n_layers - c.layer) * layer_flops(cfg, n, n) + head_flops(cfg, n - 1)
            naive += 2 * (
                n_layers * layer_flops(cfg, n, n) + head_flops(cfg, n)
            )  # ablated + baseline, full logits
    engine = 0.0
    for b in batches:
        rows, width = b.input_ids.shape
        predicted = int(b.attention_mask[:, 1:].sum())
        engine += n_layers * layer_flops(cfg, rows * width, width) + head_flops(cfg, predicted)
    by_layer: dict[int, int] = {}
    for c in conditions:
        by_layer[c.layer] = by_layer.get(c.layer, 0) + 1
    for L, n_cond in by_layer.items():
        for b in batches:
            rows, width = b.input_ids.shape
            predicted = int(b.attention_mask[:, 1:].sum())
            engine += L * layer_flops(cfg, rows * width, width)  # layer L's input, once per batch
            engine += n_cond * (
                (n_layers - L) * layer_flops(cfg, rows * width, width) + head_flops(cfg, predicted)
            )
    return {"floor": floor, "engine": engine, "naive": naive}


# ----------------------------------------------------------------------------- the two approaches


def naive_sweep(model, nu, conditions, evalset) -> np.ndarray:
    """Per condition and text: batch 1, full forward with the hook, and the baseline recomputed."""

    def ce(ids, a=None):
        x = torch.tensor([ids])
        with torch.no_grad(), edit_output(model, a.hook, a.apply) if a else nullcontext():
            logits = model(input_ids=x).logits[0].float()
        return F.cross_entropy(logits[:-1], x[0, 1:]).item()

    out = np.zeros((len(conditions), len(evalset.token_ids)))
    for c_i, c in enumerate(conditions):
        a = ablation.make_ablation(nu.layers[c.layer], c.feature_ids, c.mode)
        for t_i, ids in enumerate(evalset.token_ids):
            out[c_i, t_i] = ce(ids, a) - ce(ids)
    return out


def engine_sweep(model, nu, conditions, evalset, batch_size: int, max_rows: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:  # a fresh store: nothing cached
        store = ConditionStore(Path(tmp), {"bench": True})
        result = sweep.run_sweep(
            model, evalset, nu, conditions, store, batch_size, pad_id=0, max_rows=max_rows
        )
    return result.ablated - result.baseline


def best_rate(model, rows: int, width: int, repeats: int = 2) -> float:
    """FLOP/s of one large stacked forward over all layers + head: the best throughput the engine can
    reach."""
    cfg = model.config
    h = torch.randn(rows, width, cfg.hidden_size) * 0.1
    mask = torch.ones(rows, width, dtype=torch.long)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            final = run_from_layer(model, h, mask, 0)
            logits_from_hidden(model, final[:, :-1])  # the head as the engine runs it (fp32)
        times.append(time.perf_counter() - t0)
    return (
        cfg.num_hidden_layers * layer_flops(cfg, rows * width, width) + head_flops(cfg, rows * (width - 1))
    ) / min(times)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--layers", default="3,10,17,24", help="ablated layers")
    p.add_argument(
        "--languages", type=int, default=2, help="number of languages (each ablated and evaluated)"
    )
    p.add_argument("--texts-per-lang", type=int, default=1, help="evaluation texts per language")
    p.add_argument(
        "--tokens",
        default="28,36",
        help="text lengths in tokens, cycled over texts (FLORES sentences: ~25-45)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the engine (median reported)")
    p.add_argument(
        "--naive-repeats", type=int, default=3, help="timed repeats of the naive approach (median reported)"
    )
    p.add_argument("--max-rows", type=int, default=64, help="engine: texts x conditions per forward")
    p.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "bench_results" / "bench_ablation.json",
        help="where the JSON result is written",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    langs = LANGS[: args.languages]
    lengths_cycle = [int(x) for x in args.tokens.split(",")]

    t0 = time.perf_counter()
    model = qwen3_06b_shape()
    print(
        f"random Qwen3-0.6B-shaped model built in {time.perf_counter() - t0:.0f}s; "
        f"{torch.get_num_threads()} threads"
    )
    nu = fake_nu(layers, langs, model.config.hidden_size)
    conditions = [
        c
        for c in sweep.sweep_conditions(nu, langs, "directional", 2, 0, 0)
        if c.features in ("top1", "top1+2")
    ]
    g = torch.Generator().manual_seed(1)
    n_texts = len(langs) * args.texts_per_lang
    lengths = [lengths_cycle[i % len(lengths_cycle)] for i in range(n_texts)]
    ids = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    evalset = EvalSet(tuple(langs), ids, np.repeat(np.arange(len(langs)), args.texts_per_lang), "random ids")
    batch_size = n_texts  # one batch: all texts
    print(
        f"sweep: {len(conditions)} conditions (layers {layers} x {len(langs)} languages x top1, top1+2) "
        f"x {n_texts} texts"
    )

    # Interleaved, so that load from other processes on the machine hits both approaches alike.
    engine_times, naive_times, engine_delta, naive_delta = [], [], None, None
    load_before = os.getloadavg()
    for r in range(max(args.repeats, args.naive_repeats)):
        if r < args.repeats:
            t0 = time.perf_counter()
            engine_delta = engine_sweep(model, nu, conditions, evalset, batch_size, args.max_rows)
            engine_times.append(time.perf_counter() - t0)
            print(f"  engine run {r + 1}: {engine_times[-1]:.1f}s")
        if r < args.naive_repeats:
            t0 = time.perf_counter()
            naive_delta = naive_sweep(model, nu, conditions, evalset)
            naive_times.append(time.perf_counter() - t0)
            print(f"  naive run {r + 1}: {naive_times[-1]:.1f}s")
    load_after = os.getloadavg()

    batches = make_batches(ids, batch_size, 0)
    flops = count_flops(model.config, lengths, conditions, batches, args.max_rows)
    rate = best_rate(model, max(1, -(-512 // max(lengths))), max(lengths))  # ~512 tokens in one forward
    engine_s, naive_s = statistics.median(engine_times), statistics.median(naive_times)
    floor_s = flops["floor"] / rate
    max_diff = float(np.abs(engine_delta - naive_delta).max())
    result = {
        "shape": "Qwen3-0.6B (random weights), fp32, CPU",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before_after": [load_before, load_after],
        },
        "sweep": {
            "layers": layers,
            "languages": langs,
            "feature_sets": ["top1", "top1+2"],
            "n_conditions": len(conditions),
            "n_texts": n_texts,
            "text_tokens": lengths,
            "engine_batch_size": batch_size,
            "max_rows": args.max_rows,
        },
        "engine_s": {"median": engine_s, "runs": engine_times},
        "naive_s": {"median": naive_s, "runs": naive_times},
        "speedup_vs_naive": naive_s / engine_s,
        "gflops": {k: v / 1e9 for k, v in flops.items()},
        "engine_flops_over_floor": flops["engine"] / flops["floor"],
        "naive_flops_over_floor": flops["naive"] / flops["floor"],
        "best_rate_gflops": rate / 1e9,
        "floor_s_at_best_rate": floor_s,
        "engine_time_over_floor": engine_s / floor_s,
        "naive_time_over_floor": naive_s / floor_s,
        "max_abs_delta_ce_difference": max_diff,
        "mean_abs_delta_ce": float(np.abs(naive_delta).mean()),
        "versions": package_versions(),
    }
    save_json(result, args.out)
    print(
        f"\nengine {engine_s:.1f}s (median of {len(engine_times)}) vs naive {naive_s:.1f}s: "
        f"{naive_s / engine_s:.1f}x faster\n"
        f"FLOPs: floor {flops['floor'] / 1e9:.0f} G, engine {flops['engine'] / 1e9:.0f} G "
        f"({flops['engine'] / flops['floor']:.2f}x floor), "
        f"naive {flops['naive'] / 1e9:.0f} G ({flops['naive'] / flops['floor']:.2f}x floor)\n"
        f"best measured rate {rate / 1e9:.1f} GFLOP/s -> floor {floor_s:.1f}s; "
        f"engine at {engine_s / floor_s:.2f}x the floor's time\n"
        f"same numbers: max |ΔCE engine − ΔCE naive| = {max_diff:.2e} "
        f"(mean |ΔCE| {result['mean_abs_delta_ce']:.3f})\n"
        f"-> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
