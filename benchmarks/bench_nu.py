"""Benchmark: the nu stage against its bare cost, at the real Qwen3-0.6B shape, in one run.

Builds (in a temporary Hugging Face cache, offline) a random-weight model of the exact
Qwen3-0.6B shape and random transcoders of the real width (163,840) for a few layers in
the mwhanna layout, then measures on the same texts:
  bare  = one full model forward over every batch + one transcoder encode per layer
          of the same statistic tokens (weights already in memory, nothing else)
  stage = `python compute_nu_scores.py ...` as a user runs it (a subprocess: imports,
          model load, one SAE load per layer, forward, encodes, statistics, atomic writes)
and writes bench_results/nu_<device>.json. The target is stage / bare <= 1.15.

  python benchmarks/bench_nu.py --layers 0,14,27 --n-texts-per-lang 20
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TMP = Path(tempfile.mkdtemp(prefix="bench-nu-"))
os.environ["HF_HOME"] = str(TMP / "hf")  # before any Hugging Face import
os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from langsae.data import PAPER_LANGUAGES, load_texts  # noqa: E402
from langsae.forward import make_batches, tokenize  # noqa: E402
from langsae.nu import count_statistic_tokens  # noqa: E402
from langsae.toy import train_tokenizer, write_mwhanna_release  # noqa: E402

D_SAE = 163_840


def qwen3_06b_config(vocab_size, pad_id, eos_id):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
        max_position_embeddings=40_960, rope_theta=1_000_000, rms_norm_eps=1e-6,
        pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
    )  # fmt: skip


def build_fixtures(layers, texts, dtype):
    from transformers import Qwen3ForCausalLM

    model_dir = TMP / "model"
    tok = train_tokenizer(texts, vocab_size=8192)
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(qwen3_06b_config(len(tok), tok.pad_token_id, tok.eos_token_id)).to(dtype)
    model.save_pretrained(model_dir)
    del model
    g = torch.Generator().manual_seed(1)
    tcs = {}
    for L in layers:  # stored as the hub stores them: fp32, W_enc [d_sae, d_in]
        tcs[L] = {
            "W_enc": torch.randn(D_SAE, 1024, generator=g) / 32,
            "W_dec": torch.randn(D_SAE, 1024, generator=g) / 400,
            "b_enc": torch.randn(D_SAE, generator=g) * 0.5 - 0.5,
            "b_dec": torch.zeros(1024),
        }
    write_mwhanna_release(TMP / "hf" / "hub", "mwhanna/qwen3-0.6b-transcoders-lowl0", tcs, "Qwen/Qwen3-0.6B")
    return model_dir


@torch.no_grad()
def bare_cost(model_dir, layers, texts, device, dtype, batch_size):
    """Seconds for one full forward over all batches + one encode per layer of its statistic tokens."""
    from langsae.config import PRESETS
    from langsae.forward import capture
    from langsae.model import HookPoint, load_model, load_sae
    from dataclasses import replace

    preset = replace(PRESETS["qwen3-0.6b"], model_id=str(model_dir))
    model, tok = load_model(preset, device, dtype)
    ids = tokenize(tok, texts)
    batches = make_batches(ids, batch_size, tok.pad_token_id)
    points = {str(L): HookPoint(L, "mlp", "input") for L in layers}
    kept = {L: [] for L in layers}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    with capture(model, points) as store:
        for b in batches:
            b = b.to(device)
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)
            m = b.statistic_mask()
            for L in layers:
                kept[L].append(store[str(L)][m])
    sync()
    t_forward = time.perf_counter() - t0
    t_encode = {}
    for L in layers:
        sae = load_sae(preset, L, device, dtype)
        x = torch.cat(kept[L])
        sync()
        t0 = time.perf_counter()
        for s in range(0, x.shape[0], 1024):
            sae.encode(x[s : s + 1024])
        sync()
        t_encode[L] = time.perf_counter() - t0
        del sae
    return t_forward, t_encode, count_statistic_tokens(ids)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="0,14,27", help="transcoder layers to build and score")
    p.add_argument("--n-texts-per-lang", type=int, default=20, help="selection texts per language")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="model and SAE dtype")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward")
    p.add_argument("--out", type=Path, help="result JSON (default bench_results/nu_<device>.json)")
    args = p.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    dtype = getattr(torch, args.dtype)
    texts = load_texts(PAPER_LANGUAGES, "selection", args.n_texts_per_lang).flat()[0]

    t0 = time.perf_counter()
    model_dir = build_fixtures(layers, texts, dtype)
    print(f"fixtures built in {time.perf_counter() - t0:.0f}s under {TMP}", flush=True)

    t_forward, t_encode, n_tokens = bare_cost(model_dir, layers, texts, args.device, dtype, args.batch_size)
    bare = t_forward + sum(t_encode.values())
    print(f"bare: forward {t_forward:.1f}s + encodes {sum(t_encode.values()):.1f}s = {bare:.1f}s", flush=True)

    common = [sys.executable, "-c"]
    t0 = time.perf_counter()
    subprocess.run([*common, "import compute_nu_scores"], cwd=ROOT, check=True)
    t_import = time.perf_counter() - t0
    cmd = [
        sys.executable, "compute_nu_scores.py", "--model-id", str(model_dir), "--layers", args.layers,
        "--n-texts-per-lang", str(args.n_texts_per_lang), "--device", args.device, "--dtype", args.dtype,
        "--batch-size", str(args.batch_size), "--out-dir", str(TMP / "out"), "--force",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    stage = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    result = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "dtype": args.dtype, "layers": layers, "d_sae": D_SAE, "n_texts": len(texts), "statistic_tokens": n_tokens,
        "bare_forward_s": t_forward, "bare_encode_s": t_encode, "bare_total_s": bare,
        "stage_wall_s": stage, "python_import_s": t_import,
        "ratio_stage_to_bare": stage / bare, "ratio_without_import": (stage - t_import) / bare,
        "stage_tokens_per_s_per_layer": n_tokens * len(layers) / stage,
        "bare_tokens_per_s_per_layer": n_tokens * len(layers) / bare,
        "stage_peak_rss_gb": peak_gb, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    out = args.out or ROOT / "bench_results" / f"nu_{args.device.split(':')[0]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
