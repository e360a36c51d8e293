"""File-system faults and damaged artifacts: one error line naming the file (and the command that
remakes it), before any model loads where the fault is in the run's folders, and only the broken
unit recomputed, byte-identical to what it was."""

import errno
import hashlib
import os
import shutil
import time
import types
from pathlib import Path

import pytest

from langsae import artifacts, nu, report
from langsae.cli import run_main
from langsae.errors import CorruptArtifact
from langsae.stages import nu as compute_nu_scores
from langsae.stages import plots as plot_sae_features

TOY = ["--model", "toy", "--n-texts-per-lang", "8"]  # what the small_toy_nu fixture ran
STALE = time.time() - 2 * artifacts.STALE_TMP_S


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    lines = err.splitlines()
    errors = [line[line.index("error: ") :] for line in lines if "error: " in line]  # after any progress bar
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path) -> bytes:
    """Cut a file to half its size; return what it held."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load the model fails the test: the checks must come first."""

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the folder checks")

    monkeypatch.setattr(compute_nu_scores, "load_model", refuse)
    monkeypatch.setattr("langsae.model.load_model", refuse)


# ----------------------------------------------------------------------------- faults in the run's folders


def test_file_in_place_of_the_out_dirs_parent(small_toy, no_model, tmp_path, capsys):
    (tmp_path / "f").write_text("x\n")
    out = tmp_path / "f" / "sub"
    assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(out)]) == 2
    (line,) = error_lines(capsys)
    assert str(out) in line and f"{tmp_path / 'f'} is a file" in line
    assert (tmp_path / "f").read_text() == "x\n"


def test_file_as_the_out_dir_itself(small_toy, no_model, tmp_path, capsys):
    (tmp_path / "f").write_text("x\n")
    assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(tmp_path / "f")]) == 2
    (line,) = error_lines(capsys)
    assert f"{tmp_path / 'f'} is a file" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (chmod) folder anyway")
def test_read_only_folder_by_chmod(small_toy, no_model, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(out)]) == 2
    finally:
        out.chmod(0o755)
    (line,) = error_lines(capsys)
    assert str(out) in line and "Permission denied" in line


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_folder(small_toy, no_model, tmp_path, capsys, monkeypatch, code):
    """The same path as a read-only file system or a chmod-ed folder (root passes chmod): the probe
    write fails."""
    out = tmp_path / "ro"

    def refuse(*a, dir=None, **k):
        raise OSError(code, os.strerror(code), str(Path(dir) / ".preflight.x.probe"))

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", refuse)
    assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(out)]) == 2
    (line,) = error_lines(capsys)
    assert "cannot write in" in line and os.strerror(code) in line
    assert not out.exists(), "a folder the checks created is removed again"


def test_too_little_free_space(small_toy, no_model, tmp_path, capsys, monkeypatch):
    full = types.SimpleNamespace(total=10**9, used=10**9 - 10**6, free=10**6)  # 1 MB free
    monkeypatch.setattr(artifacts.shutil, "disk_usage", lambda p: full)
    assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(tmp_path / "o")]) == 2
    (line,) = error_lines(capsys)
    assert "1 MB free" in line and "500 MB" in line and str(tmp_path / "o") in line


def test_disk_full_while_writing_a_layer(small_toy, tmp_path, capsys, monkeypatch):
    """ENOSPC halfway through layer 1's values: one line naming that file, no temporary left, layer 1
    not marked done, layer 0 (written before) kept."""
    out = tmp_path / "o"
    real = Path.write_bytes

    def half_then_full(self, data):
        if self.name.startswith(".layer_1_values.pt."):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(out)]) == 2
    (line,) = error_lines(capsys)
    assert str(nu.layer_files(out, 1)["values"]) in line and "No space left on device" in line
    assert not list(out.rglob("*.tmp"))
    assert nu.layer_files(out, 0)["done"].exists() and not nu.layer_files(out, 1)["done"].exists()


def test_atomic_path_leaves_no_temporary_on_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with artifacts.atomic_path(tmp_path / "a.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed_fresh_ones_kept(tmp_path):
    feats, figs = tmp_path / "run", tmp_path / "fig"
    (feats / "sub").mkdir(parents=True)
    figs.mkdir()
    stale = [feats / ".layer_0_values.pt.k3j_9xq2.tmp", feats / "sub" / ".u.json.abcdefgh.tmp"]
    stale.append(figs / ".f.png.0a1b2c3d.tmp")
    fresh = feats / ".layer_1_values.pt.zz00zz00.tmp"  # a concurrent run may be writing it now
    foreign = feats / ".notes.tmp"  # not atomic_path's pattern
    for p in [*stale, fresh, foreign]:
        p.write_text("x")
    for p in [*stale, foreign]:
        os.utime(p, (STALE, STALE))
    artifacts.preflight(types.SimpleNamespace(features_dir=feats, output_dir=figs), min_free_mb=0)
    assert [p.exists() for p in stale] == [False] * 3
    assert fresh.exists() and foreign.exists()


def test_preflight_survives_a_concurrent_run_removing_the_folder_it_made(tmp_path, monkeypatch):
    """Two processes of one stage start together: the other's preflight removes the empty folder this
    one has just made, before the probe is written (the race CI once hit). The check is made again."""
    feats, figs = tmp_path / "run", tmp_path / "run" / "figures"
    real, removed = artifacts.tempfile.mkstemp, []

    def racing(*a, dir=None, **k):
        if not removed:
            removed.append(Path(dir))
            Path(dir).rmdir()  # what the other run's preflight does to an empty folder it made
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", racing)
    artifacts.preflight(types.SimpleNamespace(features_dir=feats, output_dir=figs), min_free_mb=0)
    assert removed == [figs] and not feats.exists()  # checked again; its made folders removed as before


# ----------------------------------------------------------------------------- damaged artifacts


def test_records_and_verification(tmp_path):
    path = tmp_path / "x.json"
    record = artifacts.save_json({"a": [1, 2]}, path)
    data = path.read_bytes()
    assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert artifacts.file_record(path) == record
    artifacts.verify_file(path, record, "remake")
    path.write_bytes(data.replace(b"1", b"7"))  # same size, other content
    with pytest.raises(CorruptArtifact, match=r"x\.json is corrupted .*remake it with `python a\.py`"):
        artifacts.verify_file(path, record, "python a.py")
    truncate(path)
    with pytest.raises(CorruptArtifact, match=rf"truncated \({len(data) // 2} of {len(data)} bytes\)"):
        artifacts.verify_file(path, record, "python a.py")
    with pytest.raises(CorruptArtifact, match="not valid JSON"):
        artifacts.read_json(path, "python a.py")
    with pytest.raises(CorruptArtifact, match=r"y\.pt is missing"):
        artifacts.read_torch(tmp_path / "y.pt", "python a.py")


def test_truncated_layer_is_recomputed_alone_and_identically(small_toy_nu, tmp_path, capsys, caplog):
    run = copy_run(small_toy_nu, tmp_path / "run")
    layers = artifacts.load_json(run / nu.META_FILE)["layers"]
    values = nu.layer_files(run, 0)["values"]
    original = truncate(values)
    others = {L: nu.layer_files(run, L)["values"].stat().st_ino for L in layers if L != 0}
    assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(run)]) == 0
    assert f"{len(layers) - 1} of {len(layers)} layers already done" in capsys.readouterr().out
    assert "layer_0_values.pt is truncated" in caplog.text
    assert values.read_bytes() == original
    assert {L: nu.layer_files(run, L)["values"].stat().st_ino for L in others} == others  # not rewritten


DAMAGED = ["layer_0_values.pt", "layer_0_directions.pt", "layer_0_top20.json", nu.META_FILE]


@pytest.mark.parametrize("name", DAMAGED)
def test_plot_stage_names_a_damaged_file_and_its_remake(small_toy_nu, tmp_path, capsys, name):
    run = copy_run(small_toy_nu, tmp_path / "run")
    truncate(run / name)
    assert run_main(plot_sae_features.main, [*TOY, "--out-dir", str(run)]) == 2
    (line,) = error_lines(capsys)
    assert str(run / name) in line and f"python compute_nu_scores.py --model toy --out-dir {run}" in line
    assert run_main(compute_nu_scores.main, [*TOY, "--out-dir", str(run)]) == 0  # that command repairs it
    assert run_main(plot_sae_features.main, [*TOY, "--out-dir", str(run)]) == 0
    assert (run / name).read_bytes() == (small_toy_nu / name).read_bytes() or name == nu.META_FILE


def test_report_names_a_damaged_file(small_toy_nu, tmp_path):
    run = copy_run(small_toy_nu, tmp_path / "run")
    truncate(run / nu.META_FILE)
    text = report.build_report(run, tmp_path / "figures", "run")
    section = text.split("## Stage 1: ν-scores", 1)[1].split("\n## ", 1)[0]
    assert f"{run / 'meta.json'} is corrupted" in section and "`python compute_nu_scores.py`" in section


def test_code_switching_cache_damaged_is_a_miss(tmp_path, caplog):
    import torch

    from langsae.stages import code_switching

    path = tmp_path / "layer_0.pt"
    acts = torch.arange(6.0).reshape(2, 3)
    code_switching.save_cached_layer(path, "h", {"acts": acts})
    assert torch.equal(code_switching.cached_layer(path, "h"), acts)
    assert code_switching.cached_layer(path, "other") is None
    data = bytearray(path.read_bytes())
    data[-30] ^= 1  # silent damage: same size, one bit (in the zip's directory or the tensor data)
    path.write_bytes(bytes(data))
    assert code_switching.cached_layer(path, "h") is None
    assert "layer_0.pt is corrupted (its SHA-256 differs" in caplog.text
    truncate(path)
    assert code_switching.cached_layer(path, "h") is None  # recomputed, not a traceback
    assert "layer_0.pt is truncated" in caplog.text
    # a cache from before the markers' records, without a marker: recomputed (a cache, not a result)
    artifacts.save_torch({"config_hash": "h", "acts": acts}, path)
    code_switching.cache_marker(path).unlink()
    assert code_switching.cached_layer(path, "h") is None
