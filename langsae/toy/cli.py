"""`python -m langsae.toy`: build the toy, verify a rebuild against the committed fingerprint,
or record this machine's vendor's fingerprint."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from langsae.artifacts import load_json, save_json
from langsae.errors import UserError
from langsae.toy.build import build_toy, current_build
from langsae.toy.reproduce import (
    FINGERPRINT_FILE,
    committed_fingerprints,
    cpu_model,
    cpu_vendor,
    fingerprint,
    first_difference,
    max_ce_difference,
)
from langsae.toy.scales import SCALES
from langsae.toy_paths import TOY_ROOT


def record_fingerprint(root: Path) -> dict:
    """Record the build in `root` (seed 0, current) as its scale's committed fingerprint for this CPU
    vendor."""
    record = current_build(root)
    if record is None or record["seed"] != 0:
        raise UserError(
            f"{root} holds no current build of seed 0; "
            f"build it first with `python -m langsae.toy --root {root}`"
        )
    table = load_json(FINGERPRINT_FILE) if FINGERPRINT_FILE.exists() else {}
    entry = {
        **fingerprint(root),
        "seed": 0,
        "hyperparameters": record["hyperparameters"],
        "versions": record["versions"],
        "machine": cpu_model(),
    }
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
        print(
            f"model CE per language vs the {other} build ({entry.get('machine', '?')}): "
            f"largest difference {max_ce_difference(actual, entry):.2e} nats"
        )
    expected = known.get(vendor)
    if expected is None:
        print(
            f"NO FINGERPRINT: none is committed for this CPU vendor ({vendor}); "
            "`--write-fingerprint` records one"
        )
        return False
    differs = first_difference(actual, expected)
    if differs is None:
        print(
            f"OK: the {scale} build (seed 0) is identical to the committed {vendor} fingerprint "
            f"({len(actual['sha256'])} files and quality.json)"
        )
        return True
    print(
        f"DIFFERS: the {scale} build (seed 0) does not match the committed {vendor} fingerprint; "
        f"first differing artifact: {differs}"
    )
    changed = {
        k: (expected["versions"].get(k), v) for k, v in versions.items() if expected["versions"].get(k) != v
    }
    if changed:
        print(f"package versions differ from the ones that made the fingerprint (committed, here): {changed}")
    return False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m langsae.toy",
        description="Build the offline toy model organism: a small Qwen3 trained on NTREX-128 text of the "
        "paper's ten languages, and one transcoder per layer, in the layout the `toy` preset loads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the folder holds a current build")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice in the build")
    p.add_argument(
        "--scale",
        choices=list(SCALES),
        default="full",
        help="full: the toy model, trained on text and task lines (langsae.toy.task_text; about 8 "
        "minutes on 2 idle AMD cores); small: the same recipe in under a minute, for tests; "
        "full-plain: the toy before issue 18 (text only, no task lines; can run --split devtest)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=TOY_ROOT,
        help="folder to build into; the toy preset reads the default "
        "(toy_model/, or $LANGSAE_TOY_DIR when set)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="build the default seed at --scale into a temporary folder and compare every file and the "
        "quality report with the committed fingerprint (exit 1 naming the first artifact that differs)",
    )
    p.add_argument(
        "--write-fingerprint",
        action="store_true",
        help="record the current seed-0 build in --root as its scale's committed fingerprint for this "
        "machine's CPU vendor (for maintainers, after a recipe change: then on an Intel and on an AMD "
        "machine)",
    )
    args = p.parse_args(argv)
    if args.verify:
        if not verify(args.scale):
            raise SystemExit(1)
        return
    if args.write_fingerprint:
        entry = record_fingerprint(args.root)
        print(
            f"recorded the {cpu_vendor()} fingerprint of {args.root} "
            f"({len(entry['sha256'])} files and quality.json) in {FINGERPRINT_FILE}"
        )
        return
    build_toy(args.root, seed=args.seed, scale=args.scale, force=args.force)
