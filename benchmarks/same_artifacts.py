"""Are two runs' artifacts the same? For a refactor that must not change results.

    python benchmarks/same_artifacts.py RUN_A RUN_B     # each: a folder holding sae_features/ and output/
                                                        # (or any two folders laid out alike)

Every file under A and B is compared: identical bytes first; then, for JSON, the parsed values (key
order aside) with the differing key paths named; for .pt, every tensor and value (torch.equal);
for PDFs, the bytes without their creation date; for REPORT.md, the lines, apart from the rows that
record when and from which commit it was written.
Fields that only record when or how fast a stage ran (timestamps, wall times, a claim's
heartbeat) are listed apart, as volatile. Exit status 0 when nothing else differs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

VOLATILE_KEYS = {"started", "wall_s", "written", "created", "timestamp", "elapsed_s", "heartbeat", "seconds"}
VOLATILE_LINES = ("| report written |", "| code (git commit) |")
PDF_DATE = re.compile(
    rb"/CreationDate \(D:[0-9Z'+-]*\)"
)  # matplotlib stamps each PDF with the time it was drawn


def _json_diff(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'B' if k not in a else 'A'}")
            else:
                out += _json_diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:80]!r} != {str(b)[:80]!r}"]


def _volatile(diff: str) -> bool:
    return any(f"/{k}" in diff.split(":")[0] for k in VOLATILE_KEYS)


def _torch_same(a: Path, b: Path) -> bool:
    import torch

    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
        return x == y

    return same(torch.load(a, weights_only=False), torch.load(b, weights_only=False))


def compare(a_root: Path, b_root: Path) -> dict[str, list[str]]:
    """{"same": [...], "volatile": [...], "different": [...], "only": [...]}, by relative path."""
    out = {"same": [], "volatile": [], "different": [], "only": []}
    files_a = {p.relative_to(a_root) for p in a_root.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b_root) for p in b_root.rglob("*") if p.is_file()}
    for rel in sorted(files_a ^ files_b):
        out["only"].append(f"{rel} (only in {'A' if rel in files_a else 'B'})")
    for rel in sorted(files_a & files_b):
        a, b = a_root / rel, b_root / rel
        if a.read_bytes() == b.read_bytes():
            out["same"].append(str(rel))
        elif rel.suffix == ".json":
            diffs = _json_diff(json.loads(a.read_text()), json.loads(b.read_text()))
            real = [d for d in diffs if not _volatile(d)]
            if real:
                out["different"].append(
                    f"{rel}: " + "; ".join(real[:6]) + (f" (+{len(real) - 6})" if len(real) > 6 else "")
                )
            else:
                out["volatile"].append(f"{rel}: " + ("; ".join(diffs[:3]) if diffs else "key order only"))
        elif rel.suffix == ".pdf" and PDF_DATE.sub(b"", a.read_bytes()) == PDF_DATE.sub(b"", b.read_bytes()):
            out["volatile"].append(f"{rel}: creation date only")
        elif rel.suffix == ".pt" and _torch_same(a, b):
            out["same"].append(f"{rel} (same tensors, other bytes)")
        elif rel.name == "REPORT.md":
            la = [x for x in a.read_text().splitlines() if not x.startswith(VOLATILE_LINES)]
            lb = [x for x in b.read_text().splitlines() if not x.startswith(VOLATILE_LINES)]
            if la == lb:
                out["volatile"].append(f"{rel}: written-at and commit rows only")
            else:
                moved = sorted(set(la) ^ set(lb))
                kind = (
                    "the same lines, reordered"
                    if not moved
                    else f"{len(moved)} lines differ, e.g. {moved[0][:100]!r}"
                )
                out["different"].append(f"{rel}: {kind}")
        else:
            out["different"].append(f"{rel}: bytes differ")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path, help="the first run's folder")
    p.add_argument("run_b", type=Path, help="the second run's folder")
    args = p.parse_args(argv)
    for root in (args.run_a, args.run_b):
        if not root.is_dir():
            print(f"error: {root} is not a folder", file=sys.stderr)
            return 2
    out = compare(args.run_a, args.run_b)
    for kind in ("different", "only", "volatile"):
        for line in out[kind]:
            print(f"{kind}: {line}")
    n = sum(len(v) for v in out.values())
    print(
        f"{n} files: {len(out['same'])} identical, {len(out['volatile'])} differ only in volatile fields, "
        f"{len(out['different'])} differ, {len(out['only'])} in one run only"
    )
    return 1 if out["different"] or out["only"] else 0


if __name__ == "__main__":
    sys.exit(main())
