"""Reproducibility of the toy build: the pinned kernels and environment of the build process,
and the fingerprint of a build with its comparison against the committed one of each CPU vendor."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

from langsae.artifacts import file_sha256, load_json
from langsae.errors import UserError
from langsae.toy.scales import ToyScale, _scale

log = logging.getLogger("langsae.toy")  # one logger for the whole toy, as before the split


# ----------------------------------------------------------------------------- fingerprints
#
# A fingerprint is what a build must reproduce: the SHA-256 of every file it writes and its
# quality report. The fingerprints of the default seed at each scale are committed
# (FINGERPRINT_FILE), one set per CPU vendor: the pinned build is identical on every machine of
# one vendor, but an Intel and an AMD machine round differently somewhere below the pins (see
# "bit-for-bit across machines"). `python -m langsae.toy --verify` rebuilds and compares with this
# machine's vendor's fingerprint, and the tests do the same with their small build.

FINGERPRINT_FILE = Path(__file__).resolve().parent.parent / "toy_fingerprint.json"
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
    """SHA-256 of every file of the build in `root` (in the order the build makes them) and its quality
    report."""
    root = Path(root)
    files = [p for part in ("model", "hub") for p in (root / part).rglob("*") if p.is_file()] + [
        root / "quality.json"
    ]
    names = sorted((str(p.relative_to(root)) for p in files), key=_artifact_rank)
    return {
        "sha256": {name: file_sha256(root / name) for name in names},
        "quality": load_json(root / "quality.json"),
    }


def first_difference(actual: dict, expected: dict) -> str | None:
    """The first artifact, in build order, whose fingerprint differs (a missing or extra file counts);
    None if equal."""
    names = sorted(set(actual["sha256"]) | set(expected["sha256"]), key=_artifact_rank)
    for name in names:
        if actual["sha256"].get(name) != expected["sha256"].get(name):
            return name
    return None if actual["quality"] == expected["quality"] else "quality.json"


def committed_fingerprints(scale: str) -> dict[str, dict]:
    """The committed fingerprints of the default seed at `scale`, by CPU vendor: only those recorded with
    the scale's current hyper-parameters. After a recipe change a vendor's old entry is stale (another
    recipe's bytes) and counts as absent until `--write-fingerprint` is run on a machine of that vendor."""
    table = load_json(FINGERPRINT_FILE) if FINGERPRINT_FILE.exists() else {}
    recipe = _scale(scale).recorded()
    return {
        vendor: entries[scale]
        for vendor, entries in table.items()
        if scale in entries and entries[scale].get("hyperparameters") == recipe
    }


def committed_fingerprint(scale: str, vendor: str | None = None) -> dict | None:
    """The committed fingerprint of the default seed at `scale` for `vendor` (default: this machine's),
    or None."""
    return committed_fingerprints(scale).get(vendor or cpu_vendor())


def max_ce_difference(actual: dict, expected: dict) -> float:
    """The largest difference, over languages, of two builds' model cross-entropy (quality reports)."""
    a, b = actual["quality"]["cross_entropy"], expected["quality"]["cross_entropy"]
    return max(abs(a[lang]["model"] - b[lang]["model"]) for lang in b)


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
    """The environment of the build process: this one's, with `kernels` (pinned by default) and the
    thread count."""
    threads = str(build_threads(hp))
    env = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    env.update({**kernels, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    project = str(Path(__file__).resolve().parents[2])  # the repository: the child imports langsae from it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH")) if p)
    return env


def _train_in_pinned_process(
    work: Path, seed: int, scale: str, kernels: dict[str, str] = PINNED_KERNELS
) -> None:
    """Run `_build_into` in a child process with pinned kernels (or others, to measure what rounding
    does: benchmarks/toy_rounding.py); its progress bars and logs pass through."""
    hp = _scale(scale)
    log.info(
        "building the toy (seed %d, scale %s) with %d thread(s), kernels %s",
        seed,
        scale,
        build_threads(hp),
        kernels,
    )
    code = "import sys; from langsae.toy.train import _build_worker; _build_worker(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(work), str(seed), scale], env=build_environment(hp, kernels)
    )
    if done.returncode != 0:
        raise UserError(f"the toy build failed (exit code {done.returncode}); its log is above")
