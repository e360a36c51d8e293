"""The offline model organism: a small Qwen3 trained here, with transcoders in the mwhanna layout.

`build_toy` trains, from one seed, a byte-level BPE tokenizer, a small `Qwen3ForCausalLM` on
NTREX-128 news text of the paper's ten languages, and one ReLU transcoder per layer (MLP
input -> MLP output), and saves them where the `toy` preset looks: the model under
`<root>/model`, the transcoders as an mwhanna-style release in a local Hugging Face cache
under `<root>/hub`. Toy runs then load through exactly the code real runs use. FLORES
(selection and evaluation sets) is never trained on; its evaluation set measures quality.

    python -m langsae.toy [--force] [--seed N] [--scale full|small] [--root DIR]
    python -m langsae.toy --verify [--scale full|small]     # rebuild seed 0, compare with the committed fingerprint

The build is bit-for-bit reproducible on x86-64 machines with AVX2 of one CPU vendor (see
"bit-for-bit across machines" below); the fingerprints of seed 0 are committed in
toy_fingerprint.json, one set per vendor.

The pieces that write Hugging Face file layouts are also what the tests use to build
their tiny fixtures, so toy runs, test runs and real runs share one loading path.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from langsae.artifacts import MODEL_PACKAGES, file_sha256, load_json, package_versions, save_json
from langsae.data import DATA_DIR, EVALUATION_FILE, PAPER_LANGUAGES, load_ntrex, load_texts, ntrex_file
from langsae.errors import UserError
from langsae.forward import Batch, collect_tokens, make_batches, next_token_ce, predicted_tokens, tokenize
from langsae.model import HookPoint

log = logging.getLogger(__name__)

# Where the toy is built; LANGSAE_TOY_DIR moves it (the tests build a small one elsewhere).
TOY_ROOT = Path(os.environ.get("LANGSAE_TOY_DIR", Path(__file__).resolve().parent.parent / "toy_model"))
TOY_RELEASE = "langsae-local/toy-qwen3-transcoders"  # the transcoders' repo id in the local HF cache

PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer like Qwen3's: no BOS, pad <|endoftext|>, eos <|im_end|>.

    Returns a `transformers.PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN)


def hub_repo_dir(hub_cache: Path, repo_id: str) -> Path:
    return Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"


def write_mwhanna_release(
    hub_cache: Path,
    repo_id: str,
    layers: dict[int, dict[str, torch.Tensor]],
    model_name: str,
    context_size: int = 1024,
) -> Path:
    """Write transcoders as the mwhanna release lays them out, inside a Hugging Face cache.

    `layers[L]` holds W_enc [d_sae, d_in] (as stored on the hub; sae-lens transposes it),
    W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out]. Returns the snapshot folder.
    sae-lens's `mwhanna_transcoder` loader then reads it with HF_HUB_OFFLINE=1.
    """
    from safetensors.torch import save_file

    d_sae, d_model = next(iter(layers.values()))["W_enc"].shape
    digest = hashlib.sha1(repr(sorted(layers)).encode() + repo_id.encode())
    for L in sorted(layers):
        digest.update(layers[L]["W_dec"].float().numpy().tobytes()[:4096])
    sha = digest.hexdigest()
    repo = hub_repo_dir(hub_cache, repo_id)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    wandb = {"d_model": {"value": int(d_model)}, "d_feature": {"value": int(d_sae)}, "batch_size": {"value": context_size}}
    (snap / "wandb-config.yaml").write_text(yaml.safe_dump(wandb))
    (snap / "config.yaml").write_text(yaml.safe_dump({"model_name": model_name}))
    for L, tensors in layers.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(snap / f"layer_{L}.safetensors"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snap


# ----------------------------------------------------------------------------- the build

TOY_FORMAT = 3  # bump when the recipe changes in a way the hyper-parameters do not show
TOY_MODEL_NAME = "langsae-local/toy-qwen3"
BUILD_PARTS = ("model", "hub", "quality.json", "timings.json")  # build.json is written last, after these
PARTIAL_PREFIX = ".building-"  # work folders inside the root; a kill leaves one behind, the next build removes it


@dataclass(frozen=True)
class ToyScale:
    """The hyper-parameters of one build; all of them are recorded in build.json."""

    texts_per_language: int  # NTREX sentences per language for the tokenizer and the model (-1: all)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_tokens: int  # training texts are truncated to this many tokens
    lm_steps: int
    lm_batch_size: int  # texts per step
    lm_lr: float
    lm_warmup_steps: int
    lm_weight_decay: float
    tc_expansion: int  # transcoder width = tc_expansion * hidden_size
    tc_texts_per_language: int  # NTREX sentences whose activations train the transcoders
    tc_steps: int
    tc_batch_tokens: int
    tc_lr: float
    tc_l1: float  # sparsity coefficient on normalised activations, so one value fits every layer
    eval_texts_per_language: int  # FLORES evaluation texts for quality.json


SCALES = {
    "full": ToyScale(
        texts_per_language=-1, vocab_size=8192, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=32, intermediate_size=384, max_tokens=128, lm_steps=600, lm_batch_size=32, lm_lr=3e-3,
        lm_warmup_steps=30, lm_weight_decay=0.1, tc_expansion=8, tc_texts_per_language=300, tc_steps=400,
        tc_batch_tokens=1024, tc_lr=3e-3, tc_l1=0.1, eval_texts_per_language=100,
    ),
    # For the tests: builds in seconds and still has every part of the full build.
    "small": ToyScale(
        texts_per_language=80, vocab_size=600, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
        head_dim=16, intermediate_size=96, max_tokens=48, lm_steps=150, lm_batch_size=16, lm_lr=1e-2,
        lm_warmup_steps=5, lm_weight_decay=0.1, tc_expansion=8, tc_texts_per_language=40, tc_steps=300,
        tc_batch_tokens=512, tc_lr=3e-3, tc_l1=0.1, eval_texts_per_language=10,
    ),
}  # fmt: skip


def _scale(name: str) -> ToyScale:
    if name not in SCALES:
        raise UserError(f"unknown toy scale {name!r}; choose one of {', '.join(SCALES)}")
    return SCALES[name]


def build_record(seed: int, scale: str) -> dict:
    """What build.json holds for a build with this seed and scale: equal records mean an equal build."""
    files = [ntrex_file(lang) for lang in PAPER_LANGUAGES] + [EVALUATION_FILE]
    record = {
        "format": TOY_FORMAT,
        "seed": seed,
        "scale": scale,
        "hyperparameters": asdict(_scale(scale)),
        "languages": list(PAPER_LANGUAGES),
        "versions": package_versions(MODEL_PACKAGES),
        "data_sha256": {str(f.relative_to(DATA_DIR)): file_sha256(f) for f in files},
    }
    return json.loads(json.dumps(record))  # the form it has after a round trip through build.json


def current_build(root: Path) -> dict | None:
    """The build.json of a complete build in `root`, if a rebuild with its own seed and scale would record the same."""
    root = Path(root)
    path = root / "build.json"
    if not (path.exists() and (root / "model" / "config.json").exists() and (root / "hub").is_dir()):
        return None
    try:
        record = load_json(path)
        expected = build_record(record["seed"], record["scale"])
    except (ValueError, KeyError, TypeError, UserError):
        return None
    return record if record == expected else None


def ensure_built(root: Path = TOY_ROOT) -> Path:
    """Reuse the toy build in `root` if it is complete and current (any seed or scale); else build the default."""
    if current_build(root) is not None:
        return Path(root)
    log.warning("no current toy build in %s: building the default (scale full, seed 0), several minutes", root)
    start = time.perf_counter()
    build_toy(root, seed=0, scale="full", force=True)
    log.info("toy build finished in %.0f s", time.perf_counter() - start)
    return Path(root)


def build_toy(root: Path = TOY_ROOT, seed: int = 0, scale: str = "full", force: bool = False) -> Path:
    """Train the toy tokenizer, model and transcoders from `seed` and save them under `root`.

    Layout: `root/model` (save_pretrained), `root/hub` (the transcoders as an mwhanna
    release in a Hugging Face cache), `root/quality.json`, and `root/build.json`, written
    last: a folder without it is not a build. Everything is made in a work folder inside
    `root` and renamed into place, so a killed build never looks complete. A call whose
    seed, scale, versions and data match the existing build.json returns at once.
    """
    root = Path(root)
    record = build_record(seed, scale)  # refuses an unknown scale before any work
    if not force and current_build(root) == record:
        log.info("toy build in %s is current (seed %d, scale %s): reusing it", root, seed, scale)
        return root
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(root)
    work = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=root))
    try:
        _train_in_pinned_process(work, seed, scale)
        # From here until build.json is back, root holds no complete build.
        (root / "build.json").unlink(missing_ok=True)
        for name in BUILD_PARTS:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (work / name).rename(target)
        save_json(record, root / "build.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("toy build (seed %d, scale %s) written to %s in %.0f s", seed, scale, root, time.perf_counter() - start)
    return root


# ----------------------------------------------------------------------------- fingerprints
#
# A fingerprint is what a build must reproduce: the SHA-256 of every file it writes and its
# quality report. The fingerprints of the default seed at each scale are committed
# (FINGERPRINT_FILE), one set per CPU vendor: the pinned build is identical on every machine of
# one vendor, but an Intel and an AMD machine round differently somewhere below the pins (see
# "bit-for-bit across machines"). `python -m langsae.toy --verify` rebuilds and compares with this
# machine's vendor's fingerprint, and the tests do the same with their small build.

FINGERPRINT_FILE = Path(__file__).resolve().parent / "toy_fingerprint.json"
_STAGE_ORDER = ("model/tokenizer", "model/", "hub/", "quality.json")  # the order the build makes them


def _cpuinfo(field: str) -> str:
    """A field of /proc/cpuinfo's first processor; platform.processor() where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...), which keys the committed fingerprints."""
    return _cpuinfo("vendor_id")


def cpu_model() -> str:
    """The CPU's model name, recorded beside a fingerprint."""
    return _cpuinfo("model name")


def _artifact_rank(name: str) -> tuple[int, str]:
    return next(i for i, prefix in enumerate(_STAGE_ORDER) if name.startswith(prefix)), name


def fingerprint(root: Path) -> dict:
    """SHA-256 of every file of the build in `root` (in the order the build makes them) and its quality report."""
    root = Path(root)
    files = [p for part in ("model", "hub") for p in (root / part).rglob("*") if p.is_file()] + [root / "quality.json"]
    names = sorted((str(p.relative_to(root)) for p in files), key=_artifact_rank)
    return {"sha256": {name: file_sha256(root / name) for name in names}, "quality": load_json(root / "quality.json")}


def build_identity(root: Path) -> str | None:
    """The content identity of the build in `root` (model, tokenizer, transcoders and quality report):
    a hash of its fingerprint, whose names are relative to `root`, so a moved or copied build keeps it.
    None when `root` holds no complete build. Hashed once per build per process (the toy is a few MB)."""
    stamp = Path(root) / "build.json"
    if not stamp.exists():
        return None
    return _fingerprint_hash(Path(root).resolve(), stamp.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _fingerprint_hash(root: Path, build_stamp: int) -> str:
    """build_stamp (build.json's mtime) is only a cache key: a rebuild rewrites build.json last."""
    blob = json.dumps(fingerprint(root), sort_keys=True).encode()
    return "toy-sha256:" + hashlib.sha256(blob).hexdigest()


def first_difference(actual: dict, expected: dict) -> str | None:
    """The first artifact, in build order, whose fingerprint differs (a missing or extra file counts); None if equal."""
    names = sorted(set(actual["sha256"]) | set(expected["sha256"]), key=_artifact_rank)
    for name in names:
        if actual["sha256"].get(name) != expected["sha256"].get(name):
            return name
    return None if actual["quality"] == expected["quality"] else "quality.json"


def committed_fingerprints(scale: str) -> dict[str, dict]:
    """The committed fingerprints of the default seed at `scale`, by CPU vendor."""
    table = load_json(FINGERPRINT_FILE) if FINGERPRINT_FILE.exists() else {}
    return {vendor: entries[scale] for vendor, entries in table.items() if scale in entries}


def committed_fingerprint(scale: str, vendor: str | None = None) -> dict | None:
    """The committed fingerprint of the default seed at `scale` for `vendor` (default: this machine's), or None."""
    return committed_fingerprints(scale).get(vendor or cpu_vendor())


def max_ce_difference(actual: dict, expected: dict) -> float:
    """The largest difference, over languages, of two builds' model cross-entropy (quality reports)."""
    a, b = actual["quality"]["cross_entropy"], expected["quality"]["cross_entropy"]
    return max(abs(a[lang]["model"] - b[lang]["model"]) for lang in b)


def record_fingerprint(root: Path) -> dict:
    """Record the build in `root` (seed 0, current) as its scale's committed fingerprint for this CPU vendor."""
    record = current_build(root)
    if record is None or record["seed"] != 0:
        raise UserError(f"{root} holds no current build of seed 0; build it first with `python -m langsae.toy --root {root}`")
    table = load_json(FINGERPRINT_FILE) if FINGERPRINT_FILE.exists() else {}
    entry = {**fingerprint(root), "seed": 0, "versions": record["versions"], "machine": cpu_model()}
    table.setdefault(cpu_vendor(), {})[record["scale"]] = entry
    save_json(table, FINGERPRINT_FILE)
    return entry


def verify(scale: str) -> bool:
    """Build the default seed at `scale` into a temporary folder and compare it with the committed
    fingerprint of this machine's CPU vendor; print the verdict, the first artifact that differs, and
    how far the quality report is from every vendor's."""
    vendor, known = cpu_vendor(), committed_fingerprints(scale)
    if not known:
        raise UserError(f"no committed fingerprint for scale {scale!r} in {FINGERPRINT_FILE}")
    with tempfile.TemporaryDirectory(prefix="langsae-toy-verify-") as tmp:
        root = build_toy(Path(tmp) / "toy", seed=0, scale=scale, force=True)
        actual = fingerprint(root)
        versions = load_json(root / "build.json")["versions"]
    for other, entry in known.items():
        print(f"model CE per language vs the {other} build ({entry.get('machine', '?')}): largest difference {max_ce_difference(actual, entry):.2e} nats")
    expected = known.get(vendor)
    if expected is None:
        print(f"NO FINGERPRINT: none is committed for this CPU vendor ({vendor}); `--write-fingerprint` records one")
        return False
    differs = first_difference(actual, expected)
    if differs is None:
        print(f"OK: the {scale} build (seed 0) is identical to the committed {vendor} fingerprint ({len(actual['sha256'])} files and quality.json)")
        return True
    print(f"DIFFERS: the {scale} build (seed 0) does not match the committed {vendor} fingerprint; first differing artifact: {differs}")
    changed = {k: (expected["versions"].get(k), v) for k, v in versions.items() if expected["versions"].get(k) != v}
    if changed:
        print(f"package versions differ from the ones that made the fingerprint (committed, here): {changed}")
    return False


# ----------------------------------------------------------------------------- bit-for-bit across machines
#
# The same seed must give the same bytes on any x86-64 machine with AVX2 (Intel since 2013,
# AMD since 2017) and any core count. Left to themselves, torch and MKL pick kernels by the
# CPU (AVX-512 here, AVX2 on another machine; MKL also by vendor and cache sizes) and split
# reductions by the number of threads, and each choice rounds differently; over hundreds of
# training steps those roundings grow into different weights. So the build runs in a child
# process started with every kernel path pinned (the libraries read these variables once,
# when they load, hence a fresh process) and a thread count that does not follow the machine:
#   ATen (elementwise ops, softmax, reductions, attention): its AVX2 kernels, the same
#       compiled code on every AVX2 machine (its portable kernels are 2-3x slower);
#   MKL (matrix products): its COMPATIBLE path, the only reproducible one that MKL also
#       honours on AMD processors (the AVX2 path is Intel-only and silently falls back);
#   oneDNN: the ISA every x86-64 machine has.
# With these pins, builds on Intel Xeons (AVX-512, the machine that made the first fingerprint
# and the CI machines of that time) were identical to each other, and builds on an AMD EPYC
# (Zen 4) identical to each other, but the two vendors' builds differ in the last bits (small
# scale: model CE per language within 2e-5 nats). The MKL branch is not the cause that can be
# seen here: on the EPYC every MKL_CBWR / MKL_ENABLE_INSTRUCTIONS / ONEDNN_MAX_CPU_ISA variant
# with COMPATIBLE gives the same bytes. So fingerprints are kept per vendor (cpu_vendor), and
# the tests compare the small build with its own vendor's and the quality report with every
# vendor's within a tolerance.

PINNED_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",  # MKL may not lower its thread count on its own
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "TOKENIZERS_PARALLELISM": "false",
    # Idle threads sleep instead of spinning: changes no number, but on a busy machine spinning
    # threads starve the one doing the work (12x slower steps were measured with another process running).
    "OMP_WAIT_POLICY": "PASSIVE",
}
PINNED_ATEN = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports under the pin


def build_threads(hp: ToyScale) -> int:
    """Threads the build trains with, whatever the machine has: a reduction split over a
    different number of threads rounds differently. One for builds too small to gain from
    more (thread wake-ups cost more than the work on tiny matrices)."""
    return 1 if hp.hidden_size < 64 else 2


def build_environment(hp: ToyScale, kernels: dict[str, str] = PINNED_KERNELS) -> dict[str, str]:
    """The environment of the build process: this one's, with `kernels` (pinned by default) and the thread count."""
    threads = str(build_threads(hp))
    env = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    env.update({**kernels, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    project = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH")) if p)
    return env


def _train_in_pinned_process(work: Path, seed: int, scale: str, kernels: dict[str, str] = PINNED_KERNELS) -> None:
    """Run `_build_into` in a child process with pinned kernels (or others, to measure what rounding
    does: benchmarks/toy_rounding.py); its progress bars and logs pass through."""
    hp = _scale(scale)
    log.info("building the toy (seed %d, scale %s) with %d thread(s), kernels %s", seed, scale, build_threads(hp), kernels)
    code = "import sys; from langsae.toy import _build_worker; _build_worker(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, str(work), str(seed), scale], env=build_environment(hp, kernels))
    if done.returncode != 0:
        raise UserError(f"the toy build failed (exit code {done.returncode}); its log is above")


def _build_worker(argv: list[str]) -> None:
    """Entry point of the build process: `_build_into(work, seed, scale)` with the thread count pinned."""
    from langsae.cli import setup_logging

    setup_logging()
    work, seed, scale = Path(argv[0]), int(argv[1]), argv[2]
    hp = _scale(scale)
    if os.environ.get("ATEN_CPU_CAPABILITY") == PINNED_KERNELS["ATEN_CPU_CAPABILITY"] and torch.backends.cpu.get_cpu_capability() != PINNED_ATEN:
        log.warning("this CPU has no AVX2: the build runs other kernels and will not match the committed fingerprint")
    torch.set_num_threads(build_threads(hp))
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    quality, laps = _build_into(work, seed, hp)
    save_json(quality, work / "quality.json")
    timings = {"stage_seconds": laps, "build_seconds": round(time.perf_counter() - start, 1)}
    save_json({**timings, "threads": torch.get_num_threads(), "aten_kernels": torch.backends.cpu.get_cpu_capability()}, work / "timings.json")


def _remove_abandoned_work(root: Path) -> None:
    """Delete work folders of builds whose process is gone."""
    for path in root.glob(f"{PARTIAL_PREFIX}*"):
        try:
            pid = int(path.name.removeprefix(PARTIAL_PREFIX).split("-")[0])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


def _build_into(out: Path, seed: int, hp: ToyScale) -> tuple[dict, dict[str, float]]:
    """Train everything and write `out/model` and `out/hub`; return the quality report and
    each stage's wall time (kept apart: the report is part of the build's fingerprint)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    clock = _StageClock()
    texts = load_ntrex(PAPER_LANGUAGES)
    if hp.texts_per_language != -1:
        texts = {lang: t[: hp.texts_per_language] for lang, t in texts.items()}
    train_texts = [t for lang in PAPER_LANGUAGES for t in texts[lang]]
    tokenizer = train_tokenizer(train_texts, hp.vocab_size)
    train_ids = tokenize(tokenizer, train_texts, hp.max_tokens)
    n_tokens = sum(map(len, train_ids))
    log.info("tokenizer: vocabulary %d; %d training texts, %d tokens", len(tokenizer), len(train_texts), n_tokens)
    clock.lap("tokenizer")

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hp.hidden_size, intermediate_size=hp.intermediate_size,
        num_hidden_layers=hp.num_layers, num_attention_heads=hp.num_heads, num_key_value_heads=hp.num_kv_heads,
        head_dim=hp.head_dim, tie_word_embeddings=True, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    model = Qwen3ForCausalLM(cfg)
    n_params = model.num_parameters()
    log.info("toy model: %.2fM parameters, %d layers, hidden %d", n_params / 1e6, hp.num_layers, hp.hidden_size)
    train_model(model, train_ids, tokenizer.pad_token_id, hp, seed)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    clock.lap("model")

    # Transcoders learn from fresh forward passes of the trained model on a seeded sample of its training text.
    g = torch.Generator().manual_seed(seed + 1)
    tc_texts = [t for lang in PAPER_LANGUAGES for t in _sample(texts[lang], hp.tc_texts_per_language, g)]
    tc_batches = make_batches(tokenize(tokenizer, tc_texts, hp.max_tokens), 32, tokenizer.pad_token_id)
    xs, ys = mlp_activations(model, tc_batches, range(hp.num_layers))
    clock.lap("activations")
    transcoders = {}
    for L in range(hp.num_layers):
        transcoders[L] = train_transcoder(
            xs[L], ys[L], hp.tc_expansion * hp.hidden_size, hp.tc_steps, hp.tc_batch_tokens, hp.tc_lr, hp.tc_l1,
            seed=seed * 1000 + L, desc=f"transcoder L{L}",
        )  # fmt: skip
    write_mwhanna_release(out / "hub", TOY_RELEASE, transcoders, model_name=TOY_MODEL_NAME, context_size=hp.max_tokens)
    clock.lap("transcoders")

    unigram = torch.bincount(torch.tensor([t for ids in train_ids for t in ids]), minlength=len(tokenizer))
    quality = measure_quality(model, tokenizer, transcoders, unigram, hp.eval_texts_per_language)
    for L in range(hp.num_layers):
        quality["transcoders"][L]["dead_fraction"] = dead_fraction(transcoders[L], xs[L])
    quality["dead_fraction_tokens"] = int(xs[0].shape[0])
    quality["model"] = {"parameters": n_params, "vocab_size": len(tokenizer), "train_tokens": n_tokens}
    clock.lap("quality")
    quality["threads"] = torch.get_num_threads()
    log_quality(quality)
    return quality, clock.laps


class _StageClock:
    """Wall time of each build stage, logged as it ends and kept for quality.json."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._last, 1)
        self._last = now
        log.info("%s done in %.1f s", stage, self.laps[stage])


def _sample(items: list, n: int, g: torch.Generator) -> list:
    if n >= len(items):
        return list(items)
    return [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:n].tolist())]


def train_model(model, token_ids: list[list[int]], pad_id: int, hp: ToyScale, seed: int) -> None:
    """Next-token training with AdamW: linear warm-up, cosine decay to zero; padding masked out of the loss.

    Batches mix languages (`mixed_batches`) and the learning rate ends at zero, so the
    weights do not depend on which language the last few batches happened to hold: with
    one-language batches and a learning rate still high at the end, rounding alone moved a
    language's CE by a third of a nat between builds.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.lm_weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=hp.lm_lr, betas=(0.9, 0.95),
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, hp.lm_warmup_steps, hp.lm_steps))
    g = torch.Generator().manual_seed(seed)
    epoch: list[Batch] = []
    running = None
    model.train()
    bar = tqdm(range(hp.lm_steps), desc="toy model", unit="step")
    for _ in bar:
        if not epoch:
            epoch = mixed_batches(token_ids, hp.lm_batch_size, pad_id, g)
        batch = epoch.pop()
        loss = next_token_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
    model.eval()


def next_token_loss(model, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the real tokens of a right-padded batch, as the model's own
    `labels=` loss, but the LM head runs only on positions that predict a real token: with a
    vocabulary 64x the hidden size, the head on padding was a tenth of a training step."""
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    h, targets, _ = predicted_tokens(hidden, batch.input_ids, batch.attention_mask)
    return torch.nn.functional.cross_entropy(model.lm_head(h), targets)


def mixed_batches(token_ids: list[list[int]], batch_size: int, pad_id: int, g: torch.Generator, window: int = 16) -> list[Batch]:
    """One epoch of batches in a seeded random order, each a random mix of texts (and so of languages).

    Texts are shuffled, then sorted by length only within windows of `window` batches, which
    keeps padding small without grouping a language's (similar-length) texts together.
    """
    order = torch.randperm(len(token_ids), generator=g).tolist()
    batches = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        for b in make_batches([token_ids[i] for i in chunk], batch_size, pad_id):
            batches.append(Batch(b.input_ids, b.attention_mask, [chunk[i] for i in b.indices]))
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def mlp_activations(model, batches: list[Batch], layers) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """MLP inputs and outputs of every non-padding token: ({L: [N, d_in]}, {L: [N, d_out]}).

    Position 0 is kept: transcoders must reconstruct every position an ablation may touch.
    """
    layers = list(layers)
    points = {f"in{L}": HookPoint(L, "mlp", "input") for L in layers}
    points |= {f"out{L}": HookPoint(L, "mlp", "output") for L in layers}
    acts, _ = collect_tokens(model, batches, points, lambda b: b.attention_mask.bool(), "activations")
    return {L: acts[f"in{L}"].float() for L in layers}, {L: acts[f"out{L}"].float() for L in layers}


def train_transcoder(
    x: torch.Tensor,
    y: torch.Tensor,
    d_sae: int,
    steps: int,
    batch_tokens: int,
    lr: float,
    l1: float,
    seed: int,
    desc: str = "transcoder",
) -> dict[str, torch.Tensor]:
    """A ReLU transcoder from MLP inputs x [N, d_in] to MLP outputs y [N, d_out].

    encode(x) = relu(x @ W_enc.T + b_enc), decode(a) = a @ W_dec + b_dec. The loss is the
    squared error plus `l1` times the activations weighted by their decoder norms (so the
    penalty cannot be dodged by shrinking activations and growing decoder rows). Returns the
    hub layout: W_enc [d_sae, d_in], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out].
    """
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = x.shape[1], y.shape[1]
    # Train on unit-scale activations so that one l1 and one learning rate fit every layer;
    # the two scales are folded back into the weights at the end.
    sx = x.pow(2).mean().sqrt()
    sy = (y - y.mean(0)).pow(2).mean().sqrt()
    W_enc = (torch.randn(d_in, d_sae, generator=g) / d_in**0.5).requires_grad_()
    # Unit-norm decoder rows: with small ones the decoder-norm-weighted penalty starts near
    # zero and hundreds of weakly active features per token survive a short training.
    W_dec = torch.randn(d_sae, d_out, generator=g)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = (y.mean(0) / sy).requires_grad_()
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    # l1 ramps up over the first tenth (fewer features die early); lr decays to 0 over the last fifth.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / max(1, steps // 5)))
    bar = tqdm(range(steps), desc=desc, unit="step")
    running = None
    for step in bar:
        idx = torch.randint(0, x.shape[0], (batch_tokens,), generator=g)
        xb, yb = x[idx] / sx, y[idx] / sy
        acts = torch.relu(xb @ W_enc + b_enc)
        mse = (acts @ W_dec + b_dec - yb).pow(2).sum(-1).mean() / d_out
        sparsity = (acts * W_dec.norm(dim=1)).sum(-1).mean() / d_out**0.5
        loss = mse + l1 * min(1.0, step / max(1, steps // 10)) * sparsity
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = mse.item() if running is None else 0.9 * running + 0.1 * mse.item()
        bar.set_postfix(mse=f"{running:.3f}", l0=f"{(acts > 0).float().sum(-1).mean().item():.0f}")
    with torch.no_grad():
        return {
            "W_enc": (W_enc / sx).T.contiguous(),
            "W_dec": (W_dec * sy).contiguous(),
            "b_enc": b_enc.detach().clone(),
            "b_dec": (b_dec * sy).contiguous(),
        }


def encode(tc: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Feature activations [N, d_sae] of hub-layout weights on inputs x [N, d_in]."""
    return torch.relu(x @ tc["W_enc"].T + tc["b_enc"])


def fraction_of_variance_explained(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    """1 - sum |y - y_hat|^2 / sum |y - mean(y)|^2 over tokens; y, y_hat [N, d]."""
    return 1.0 - ((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()


@torch.no_grad()
def dead_fraction(tc: dict[str, torch.Tensor], x: torch.Tensor, chunk: int = 8192) -> float:
    """Fraction of features never active on any of the tokens x [N, d_in]."""
    alive = torch.zeros(tc["W_enc"].shape[0], dtype=torch.bool)
    for start in range(0, x.shape[0], chunk):
        alive |= (encode(tc, x[start : start + chunk]) > 0).any(0)
    return 1.0 - alive.float().mean().item()


@torch.no_grad()
def measure_quality(model, tokenizer, transcoders: dict[int, dict], unigram_counts: torch.Tensor, n_texts: int) -> dict:
    """Per-language next-token CE on unseen FLORES evaluation texts, against an add-one unigram
    of the training tokens on the same predicted tokens; per-layer transcoder FVE and L0 on those texts."""
    texts = load_texts(PAPER_LANGUAGES, "evaluation", n_texts)
    unigram_logp = torch.log((unigram_counts.double() + 1) / (unigram_counts.sum() + len(unigram_counts))).float()
    ce: dict[str, dict] = {}
    all_batches: list[Batch] = []
    for lang in tqdm(PAPER_LANGUAGES, desc="quality", unit="language"):
        batches = make_batches(tokenize(tokenizer, texts.by_language[lang]), 16, tokenizer.pad_token_id)
        all_batches += batches
        model_nll, unigram_nll, n = 0.0, 0.0, 0
        for batch in batches:
            final = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            mean, count = next_token_ce(model, final, batch.input_ids, batch.attention_mask)
            model_nll += (mean * count).nansum().item()  # a text with nothing to predict has mean NaN, count 0
            predicted = batch.attention_mask[:, 1:].bool()
            unigram_nll -= unigram_logp[batch.input_ids[:, 1:]][predicted].sum().item()
            n += int(count.sum())
        ce[lang] = {"model": model_nll / n, "unigram": unigram_nll / n, "predicted_tokens": n}
    xs, ys = mlp_activations(model, all_batches, sorted(transcoders))
    transcoder_quality = {}
    for L, tc in transcoders.items():
        acts = encode(tc, xs[L])
        y_hat = acts @ tc["W_dec"] + tc["b_dec"]
        transcoder_quality[L] = {
            "fve": fraction_of_variance_explained(ys[L], y_hat),
            "l0": (acts > 0).float().sum(-1).mean().item(),
            "d_sae": acts.shape[1],
        }
    return {
        "eval_texts": texts.source,
        "eval_texts_per_language": n_texts,
        "cross_entropy": ce,
        "transcoders": transcoder_quality,
    }


def log_quality(q: dict) -> None:
    log.info("next-token cross-entropy (nats) on %d unseen FLORES texts per language:", q["eval_texts_per_language"])
    log.info("  %-10s %8s %8s", "language", "model", "unigram")
    for lang, row in q["cross_entropy"].items():
        log.info("  %-10s %8.3f %8.3f", lang, row["model"], row["unigram"])
    n = q["dead_fraction_tokens"]
    log.info("transcoders (FVE, L0 on those texts; dead: never active on %d training tokens):", n)
    log.info("  %-5s %6s %7s %6s", "layer", "FVE", "L0", "dead")
    for L, row in q["transcoders"].items():
        log.info("  %-5d %6.3f %7.1f %6.3f", L, row["fve"], row["l0"], row["dead_fraction"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m langsae.toy",
        description="Build the offline toy model organism: a small Qwen3 trained on NTREX-128 text of the paper's "
        "ten languages, and one transcoder per layer, in the layout the `toy` preset loads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the folder holds a current build")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice in the build")
    p.add_argument(
        "--scale",
        choices=list(SCALES),
        default="full",
        help="full: the toy model (a few minutes on 2 cores); small: a build of seconds, for tests",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=TOY_ROOT,
        help="folder to build into; the toy preset reads the default (toy_model/, or $LANGSAE_TOY_DIR when set)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="build the default seed at --scale into a temporary folder and compare every file and the quality "
        "report with the committed fingerprint (exit 1 naming the first artifact that differs)",
    )
    p.add_argument(
        "--write-fingerprint",
        action="store_true",
        help="record the current seed-0 build in --root as its scale's committed fingerprint for this machine's CPU vendor "
        "(for maintainers, after a recipe change: then on an Intel and on an AMD machine)",
    )
    args = p.parse_args(argv)
    if args.verify:
        if not verify(args.scale):
            raise SystemExit(1)
        return
    if args.write_fingerprint:
        entry = record_fingerprint(args.root)
        print(f"recorded the {cpu_vendor()} fingerprint of {args.root} ({len(entry['sha256'])} files and quality.json) in {FINGERPRINT_FILE}")
        return
    build_toy(args.root, seed=args.seed, scale=args.scale, force=args.force)


if __name__ == "__main__":
    from langsae.cli import run_main

    sys.exit(run_main(main))
