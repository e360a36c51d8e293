"""Atomic writes: files get the mode the umask asks for, as a plain open() would give them."""

import os
import stat

import pytest

from langsae import artifacts


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_saved_files_follow_the_umask(tmp_path, umask, mask, expected):
    from langsae.plots import plt, save_figure  # plots picks the file-only backend first

    umask(mask)
    artifacts.save_json({"a": 1}, tmp_path / "x.json")
    artifacts.save_torch({"a": 1}, tmp_path / "x.pt")
    artifacts.save_text("a", tmp_path / "x.csv")
    artifacts.save_json({"a": 2}, tmp_path / "x.json")  # replacing an existing file
    figures = save_figure(plt.figure(), tmp_path / "fig")
    for path in [tmp_path / "x.json", tmp_path / "x.pt", tmp_path / "x.csv", *figures]:
        assert _mode(path) == expected, path.name


def test_umask_is_read_without_proc_too(umask, monkeypatch):
    umask(0o027)
    assert artifacts.current_umask() == 0o027
    monkeypatch.setattr(artifacts, "_PROC_STATUS", "/nonexistent/status")
    assert artifacts.current_umask() == 0o027
    assert os.umask(0o027) == 0o027, "the fallback must leave the umask as it found it"
