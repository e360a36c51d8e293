"""benchmarks/same_artifacts.py, the refactor check: what it calls identical, volatile and different."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import same_artifacts  # noqa: E402


def _tree(
    root: Path, meta: dict, csv_text: str, pdf_date: str, tensor: torch.Tensor, report_time: str
) -> Path:
    (root / "sae_features").mkdir(parents=True)
    (root / "output").mkdir()
    (root / "sae_features" / "meta.json").write_text(json.dumps(meta))
    (root / "sae_features" / "rows.csv").write_text(csv_text)
    (root / "output" / "fig.pdf").write_bytes(b"%PDF-1.4 /CreationDate (D:" + pdf_date.encode() + b") body")
    torch.save({"x": tensor}, root / "sae_features" / "layer_0.pt")
    (root / "output" / "REPORT.md").write_text(f"# Report\n| report written | {report_time} |\n| a | 1 |\n")
    return root


def test_identical_volatile_and_different_files_are_told_apart(tmp_path):
    t = torch.arange(6.0)
    a = _tree(tmp_path / "a", {"stage": "x", "written": "t1", "v": [1, 2]}, "a,b\n1,2\n", "2026", t, "10:00")
    b = _tree(tmp_path / "b", {"v": [1, 2], "written": "t2", "stage": "x"}, "a,b\n1,2\n", "2027", t, "11:00")
    out = same_artifacts.compare(a, b)
    assert sorted(out["same"]) == ["sae_features/layer_0.pt", "sae_features/rows.csv"]
    assert len(out["volatile"]) == 3 and not out["different"] and not out["only"]  # meta, pdf, report
    assert same_artifacts.main([str(a), str(b)]) == 0

    (b / "sae_features" / "rows.csv").write_text("a,b\n1,3\n")
    (b / "sae_features" / "meta.json").write_text(json.dumps({"stage": "y", "written": "t2", "v": [1, 2]}))
    torch.save({"x": t + 1e-7}, b / "sae_features" / "layer_0.pt")
    (b / "output" / "extra.png").write_bytes(b"png")
    out = same_artifacts.compare(a, b)
    assert {d.split(":")[0] for d in out["different"]} == {
        "sae_features/rows.csv",
        "sae_features/meta.json",
        "sae_features/layer_0.pt",
    }
    assert "/stage: 'x' != 'y'" in next(d for d in out["different"] if d.startswith("sae_features/meta.json"))
    assert out["only"] == ["output/extra.png (only in B)"]
    assert same_artifacts.main([str(a), str(b)]) == 1
