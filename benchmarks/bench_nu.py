"""Benchmark: the nu stage against its bare cost, at the real Qwen3-0.6B shape, in one run.

Builds (in a temporary Hugging Face cache, offline) a random-weight model of the exact
Qwen3-0.6B shape (with Qwen3's real tokenizer, benchmarks/real_shape.py) and random transcoders of the
real width (163,840, stored in fp32 as the hub stores them, 1.34 GB each) for a few layers in the
mwhanna layout, then measures on the same texts:
  read  = the time to load each transcoder into memory (`load_sae`), measured alone, from
          a cold page cache (the files are dropped from it first; --warm keeps them)
  bare  = one model forward over every batch up to the deepest scored layer (the stage
          needs nothing above it) + one transcoder encode per layer of the same statistic
          tokens, weights already in memory, nothing else
  stage = `python compute_nu_scores.py ...` as a user runs it (a subprocess: imports, model
          load, one SAE load per layer, forward, encodes, statistics, atomic writes), with
          the transcoder files dropped from the page cache first unless --warm
and writes bench_results/nu_<device>_<n>texts.json with stage / bare (the target is
<= 1.1), stage / read (what matters on a GPU, where encodes take milliseconds and
reading the files is the floor), peak RSS, and the machine, including its load average
(the machine may be shared: other processes' work slows every number here).

  python benchmarks/bench_nu.py                                    # small: 20 texts/language, layers 0,14,27
  python benchmarks/bench_nu.py --n-texts-per-lang 100 --layers 0,1  # the paper's selection set

Consecutive layers from 0 keep the full run's proportion of forward to encode work (one
decoder layer of forward per scored layer); layers spread over the depth (the default)
run the whole forward for a few encodes, which flatters any fixed per-layer overhead.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from real_shape import plant_language_features, qwen3_tokenizer  # noqa: E402

from langsae.data import PAPER_LANGUAGES, load_texts  # noqa: E402
from langsae.forward import make_batches, tokenize  # noqa: E402
from langsae.nu import count_statistic_tokens  # noqa: E402
from langsae.toy import write_mwhanna_release  # noqa: E402

D_SAE = 163_840
REPO = "mwhanna/qwen3-0.6b-transcoders-lowl0"


def qwen3_06b_config(vocab_size, pad_id, eos_id, **shape):
    """Qwen3-0.6B's config (always the real 151,936 vocabulary rows); `shape` overrides sizes (a tiny run)."""
    from transformers import Qwen3Config

    sizes = dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    )
    return Qwen3Config(
        vocab_size=151_936,
        tie_word_embeddings=True,
        max_position_embeddings=40_960,
        rope_theta=1_000_000,
        rms_norm_eps=1e-6,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        **{**sizes, **shape},
    )


def random_transcoder(d_sae, d_in, g, device):
    """Random transcoder weights as the hub stores them (fp32, W_enc [d_sae, d_in]), drawn on `device`."""
    return {
        "W_enc": torch.randn(d_sae, d_in, generator=g, device=device) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g, device=device) / 400,
        "b_enc": torch.randn(d_sae, generator=g, device=device) * 0.5 - 0.5,
        "b_dec": torch.zeros(d_in, device=device),
    }


def build_fixtures(layers, dtype, plant_texts=None, device="cpu", shape=None, d_sae=D_SAE):
    """The model folder (Qwen3's real tokenizer, random weights) and the transcoder files (fp32,
    W_enc [d_sae, d_in], as on the hub), built on `device`. plant_texts {language: texts}: give each
    language a top feature whose ablation matters (real_shape.plant_language_features). `shape`:
    config overrides for a tiny run."""
    from transformers import Qwen3ForCausalLM

    model_dir = TMP / "model"
    tok = qwen3_tokenizer()
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds on a GPU, a minute on a busy CPU
        config = qwen3_06b_config(len(tok), tok.pad_token_id, tok.eos_token_id, **(shape or {}))
        model = Qwen3ForCausalLM(config)
    g = torch.Generator(device).manual_seed(1)
    d_in = model.config.hidden_size
    tcs = {L: random_transcoder(d_sae, d_in, g, device) for L in layers}
    planted = plant_language_features(model.eval(), tok, plant_texts, tcs) if plant_texts else {}
    model.to(dtype).save_pretrained(model_dir)
    del model
    if not layers:  # the model alone
        return model_dir, {}, planted
    tcs = {L: {k: v.cpu() for k, v in tc.items()} for L, tc in tcs.items()}
    snapshot = write_mwhanna_release(TMP / "hf" / "hub", REPO, tcs, "Qwen/Qwen3-0.6B")
    return model_dir, {L: snapshot / f"layer_{L}.safetensors" for L in layers}, planted


def drop_from_page_cache(paths):
    """Make the next read of these files come from the disk (only these files: the machine is shared)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def make_sync(device):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def bench_preset(model_dir):
    from dataclasses import replace

    from langsae.config import PRESETS

    return replace(PRESETS["qwen3-0.6b"], model_id=str(model_dir))


def read_cost(preset, files, device, dtype, cold):
    """Seconds to load each transcoder into memory on the device (`load_sae`, as the stage does)."""
    from langsae.model import load_sae, sae_config

    sae_config(preset, next(iter(files)))  # imports sae-lens and parses its directory: not part of a read
    sync, out = make_sync(device), {}
    for L, path in files.items():
        if cold:
            drop_from_page_cache([path])
        t0 = time.perf_counter()
        sae = load_sae(preset, L, device, dtype)
        sync()
        out[L] = time.perf_counter() - t0
        del sae
    return out


@torch.no_grad()
def bare_cost(preset, layers, texts, device, dtype, batch_size):
    """Seconds for one forward over all batches up to the deepest layer, seconds of one encode per
    layer of its statistic tokens (weights loaded beforehand, untimed), the CPU seconds of both,
    and the number of statistic tokens."""
    from langsae.forward import capture, run_through_layer
    from langsae.model import HookPoint, load_model, load_sae

    model, tok = load_model(preset, device, dtype)
    ids = tokenize(tok, texts)
    batches = make_batches(ids, batch_size, tok.pad_token_id)
    points = {str(L): HookPoint(L, "mlp", "input") for L in layers}
    kept = {L: [] for L in layers}
    sync = make_sync(device)
    cpu0, t0 = own_cpu_s(), time.perf_counter()
    with capture(model, points) as store:
        for b in batches:
            b = b.to(device)
            run_through_layer(model, b, max(layers))
            m = b.statistic_mask()
            for L in layers:
                kept[L].append(store[str(L)][m])
    sync()
    t_forward, cpu = time.perf_counter() - t0, own_cpu_s() - cpu0
    del model
    t_encode = {}
    for L in layers:
        sae = load_sae(preset, L, device, dtype)
        x = torch.cat(kept.pop(L))
        sync()
        cpu0, t0 = own_cpu_s(), time.perf_counter()
        for s in range(0, x.shape[0], 1024):
            sae.encode(x[s : s + 1024])
        sync()
        t_encode[L], cpu = time.perf_counter() - t0, cpu + own_cpu_s() - cpu0
        del sae
    return t_forward, t_encode, cpu, count_statistic_tokens(ids)


def stage_cost(model_dir, args, files):
    """(wall and CPU seconds of the stage, seconds of its imports alone, seconds it waited for each SAE);
    files dropped from the page cache first unless --warm."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import compute_nu_scores"], cwd=ROOT, check=True)
    t_import = time.perf_counter() - t0
    cmd = [
        sys.executable,
        "compute_nu_scores.py",
        "--model-id",
        str(model_dir),
        "--layers",
        args.layers,
        "--n-texts-per-lang",
        str(args.n_texts_per_lang),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--batch-size",
        str(args.batch_size),
        "--out-dir",
        str(TMP / "out"),
        "--force",
    ]
    if not args.warm:
        drop_from_page_cache(files.values())
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the bench's thread count
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
    # "layer L: done in Xs (waited Ys for its SAE)": how much of each read the prefetch did not hide
    waited = {
        int(m[1]): float(m[2])
        for m in re.finditer(r"layer (\d+): done in [\d.]+s \(waited ([\d.]+)s", done.stdout)
    }
    return wall, cpu, t_import, waited


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_s():
    t = os.times()
    return t.user + t.system


def machine(device):
    """What ran this: CPU model, cores, torch threads, GPU, load average (other processes' work)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def loadavg():
    return round(os.getloadavg()[0], 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="0,14,27", help="transcoder layers to build and score")
    p.add_argument(
        "--n-texts-per-lang", type=int, default=20, help="selection texts per language (paper: 100)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="model and SAE dtype")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward")
    p.add_argument(
        "--threads", type=int, help="torch threads for bare and stage (default: torch's own, one per core)"
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="leave the transcoder files in the page cache "
        "(default: drop them, as a first run reads from disk)",
    )
    p.add_argument("--out", type=Path, help="result JSON (default bench_results/nu_<device>_<n>texts.json)")
    p.add_argument("--keep", action="store_true", help=f"keep the fixtures under {TMP.parent}/bench-nu-*")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    dtype = getattr(torch, args.dtype)
    texts = load_texts(PAPER_LANGUAGES, "selection", args.n_texts_per_lang).flat()[0]
    load = {"start": loadavg()}
    try:
        t0 = time.perf_counter()
        model_dir, files, _ = build_fixtures(layers, dtype)
        print(f"fixtures built in {time.perf_counter() - t0:.0f}s under {TMP}", flush=True)
        preset = bench_preset(model_dir)

        t_read = read_cost(preset, files, args.device, dtype, cold=not args.warm)
        load["after_read"] = loadavg()
        print(
            f"read: {sum(t_read.values()):.1f}s ({', '.join(f'{t:.1f}' for t in t_read.values())})",
            flush=True,
        )
        t_forward, t_encode, bare_cpu, n_tokens = bare_cost(
            preset, layers, texts, args.device, dtype, args.batch_size
        )
        bare = t_forward + sum(t_encode.values())
        load["after_bare"] = loadavg()
        print(
            f"bare: forward {t_forward:.1f}s + encodes {sum(t_encode.values()):.1f}s = {bare:.1f}s",
            flush=True,
        )
        stage, stage_cpu, t_import, t_waited = stage_cost(model_dir, args, files)
        load["after_stage"] = loadavg()
        print(f"stage: {stage:.1f}s (imports {t_import:.1f}s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(TMP, ignore_errors=True)
    read = sum(t_read.values())
    result = {
        "machine": machine(args.device),
        "device": args.device,
        "dtype": args.dtype,
        "layers": layers,
        "d_sae": D_SAE,
        "n_texts": len(texts),
        "n_texts_per_lang": args.n_texts_per_lang,
        "statistic_tokens": n_tokens,
        "page_cache": "warm" if args.warm else "cold (files dropped before read and stage)",
        "read_s": t_read,
        "read_total_s": read,
        "bare_forward_s": t_forward,
        "bare_encode_s": t_encode,
        "bare_total_s": bare,
        "bare_cpu_s": bare_cpu,
        "stage_wall_s": stage,
        "stage_cpu_s": stage_cpu,
        "python_import_s": t_import,
        "stage_waited_for_sae_s": t_waited,
        "ratio_stage_to_bare": stage / bare,
        "ratio_without_import": (stage - t_import) / bare,
        "ratio_stage_to_bare_plus_read": stage / (bare + read),
        "ratio_stage_to_read": stage / read,
        "encode_s_per_token_per_layer": sum(t_encode.values()) / (n_tokens * len(layers)),
        "forward_s_per_token": t_forward / n_tokens,
        "stage_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
        "load_average_1min": load,
    }
    out = (
        args.out
        or ROOT / "bench_results" / f"nu_{args.device.split(':')[0]}_{args.n_texts_per_lang}texts.json"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
