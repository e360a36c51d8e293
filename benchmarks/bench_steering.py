"""Benchmark: a steering sweep through the generation engine vs batch-1 generation without a KV cache.

A random-weight Qwen3ForCausalLM of the exact Qwen3-0.6B shape (bench_ablation.qwen3_06b_shape; speed
does not depend on the weights) and random prompts of language-identification length stand in for the
real model and prompts. The conditions are a small steering sweep at one layer (langsae.steering):
no steering; sv and gated at alpha = 0; sv, gated (over --n-layers layers, gate decided at the first) and
a random-gate control at a fixed --alpha. The gate is a few random encoder rows at the layer's MLP input,
biased so that it opens at some positions and not others. Both sides decode greedily:
  engine:  langsae.generate.greedy_generate with stack=steering.stacked_steering (left-padded batches,
           conditions stacked along the batch, transformers' generate with its KV cache)
  naive:   one prompt under one condition at a time, the full forward of prompt + tokens so far at every
           step, no cache (how the earlier public port steered)
and the tokens must be identical at alpha = 0 (= the unsteered tokens) and at the fixed alpha.

    python benchmarks/bench_steering.py                                   # CPU, the lead's measurement
    python benchmarks/bench_steering.py --device cuda --dtype bfloat16 --items 32 --tolerate-mismatch
    python benchmarks/bench_steering.py --items 2 --new-tokens 3 --layers-shape tiny   # smoke run

Writes bench_results/bench_steering.json (git-ignored) and prints a summary. Not a test.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import engine_parser, random_model, random_prompts  # noqa: E402

from langsae.artifacts import package_versions, save_json  # noqa: E402
from langsae.features import FeatureEncoder  # noqa: E402
from langsae.generate import greedy_generate  # noqa: E402
from langsae.model import HookPoint  # noqa: E402
from langsae.steering import Gate, Steering, stacked_steering, steer  # noqa: E402


def conditions(layer: int, n_layers: int, alpha: float, hidden: int, device) -> tuple[list, list[str]]:
    """The sweep's conditions (one-row Steering or None) and their names."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(1, n_layers, hidden, generator=g).to(device) * 0.05
    k = 4
    enc = FeatureEncoder(
        tuple(range(k)),
        HookPoint(layer, "mlp", "input"),
        torch.randn(k, hidden, generator=g).to(device) / hidden**0.5,
        torch.full((k,), -0.5).to(device),
        None,
        None,
    )
    own, rand = (
        Gate(enc, torch.tensor([[True, True, False, False]], device=device)),
        Gate(enc, torch.tensor([[False, False, True, True]], device=device)),
    )
    a0, a = torch.zeros(1, device=device), torch.tensor([alpha], device=device)
    named = {
        "none": None,
        "sv_a0": Steering(layer, v[:, :1], a0),
        "gated_a0": Steering(layer, v, a0, own),
        "sv": Steering(layer, v[:, :1], a),
        "gated": Steering(layer, v, a, own),
        "random_gate": Steering(layer, v, a, rand),
    }
    return list(named.values()), list(named)


@torch.no_grad()
def naive_generate(model, prompt: list[int], s, new_tokens: int, device) -> list[int]:
    """Batch 1, no cache: the whole sequence through the model at every step, under `steer`."""
    from contextlib import nullcontext

    ids = list(prompt)
    for _ in range(new_tokens):
        with steer(model, s) if s is not None else nullcontext():
            logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def main(argv=None):
    p = engine_parser(__doc__, items=8, min_len=40, max_len=90, layer_help="first steered layer")
    p.add_argument("--n-layers", type=int, default=2, help="layers steered by the gated conditions")
    p.add_argument("--alpha", type=float, default=8.0, help="the fixed steering strength")
    args = p.parse_args(argv)
    model = random_model(args)
    n_layers = min(args.n_layers, model.config.num_hidden_layers)
    layer = min(args.layer, model.config.num_hidden_layers - n_layers)
    prompts = random_prompts(args, model.config.vocab_size)
    conds, names = conditions(layer, n_layers, args.alpha, model.config.hidden_size, args.device)
    pad, stops = 0, []  # no stop token: every row runs --new-tokens steps
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    greedy_generate(
        model, prompts[:1], conds[:1], stops, pad, 2, args.rows_per_forward, stack=stacked_steering
    )  # warm-up
    sync()
    t0 = time.perf_counter()
    engine = greedy_generate(
        model, prompts, conds, stops, pad, args.new_tokens, args.rows_per_forward, stack=stacked_steering
    )
    sync()
    t_engine = time.perf_counter() - t0

    t0 = time.perf_counter()
    naive = [
        [naive_generate(model, prompt, s, args.new_tokens, args.device) for prompt in prompts] for s in conds
    ]
    sync()
    t_naive = time.perf_counter() - t0
    mismatches = [
        (names[c], i) for c in range(len(conds)) for i in range(len(prompts)) if engine[c][i] != naive[c][i]
    ]
    alpha0_is_unsteered = all(engine[names.index(n)] == engine[0] for n in ("sv_a0", "gated_a0"))
    steered_differs = any(engine[names.index(n)] != engine[0] for n in ("sv", "gated", "random_gate"))

    result = {
        "items": args.items,
        "conditions": names,
        "new_tokens": args.new_tokens,
        "prompt_tokens": [args.min_len, args.max_len],
        "layer": layer,
        "n_layers": n_layers,
        "alpha": args.alpha,
        "rows_per_forward": args.rows_per_forward,
        "dtype": args.dtype,
        "device": args.device,
        "shape": args.layers_shape,
        "threads": torch.get_num_threads(),
        "engine_s": t_engine,
        "naive_s": t_naive,
        "speedup": t_naive / t_engine,
        "identical_tokens": not mismatches,
        "alpha0_equals_unsteered": alpha0_is_unsteered,
        "steering_changes_tokens": steered_differs,
        "mismatches": mismatches[:20],
        "n_mismatches": len(mismatches),
        "machine": platform.processor() or platform.machine(),
        "versions": package_versions(),
    }
    save_json(result, Path(__file__).resolve().parent.parent / "bench_results" / "bench_steering.json")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "engine_s",
                    "naive_s",
                    "speedup",
                    "identical_tokens",
                    "alpha0_equals_unsteered",
                    "steering_changes_tokens",
                    "n_mismatches",
                )
            },
            indent=1,
        )
    )
    if (mismatches or not alpha0_is_unsteered) and not args.tolerate_mismatch:
        raise SystemExit(
            f"engine and uncached batch-1 generation differ on {len(mismatches)} (condition, item) pairs"
            f"{', first ' + str(mismatches[0]) if mismatches else ''}; "
            f"alpha 0 = unsteered: {alpha0_is_unsteered}"
        )

    return result


if __name__ == "__main__":
    main()
