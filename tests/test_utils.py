"""lmlab.utils: atomic writes."""

import os
import stat

import pytest

from lmlab import utils


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        utils.atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        utils.atomic_write_json(tmp_path / "m.json", {"a": 1})
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert want == 0o666 & ~umask
    for name in ("config.yaml", "m.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == want, name
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "m.json", "plain.txt"]  # no temp


def test_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    utils.atomic_write_text(tmp_path / "f.txt", "x")
    if os.path.exists("/proc/self/fd"):
        assert str(tmp_path.resolve()) in synced  # the folder, after the file itself
        assert synced[-1] == str(tmp_path.resolve())
    else:
        assert len(synced) == 2
