"""Atomic writes leave files and dirs with the modes of a plain open()/mkdir() under the user's umask.

mkstemp/mkdtemp create their temp names 0600/0700; renamed into place unchanged, every
output of the recipe was unreadable by lab-mates (and by a web server serving results).
"""

from __future__ import annotations

import os
import stat

import pytest

from mtlser.utils.fileio import atomic_dir, atomic_write_bytes, atomic_write_text, current_umask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "a.txt", "x\n")
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        with atomic_dir(tmp_path / "datadir") as d:
            (d / "wav.scp").write_text("u1 /x.wav\n")
        atomic_write_text(tmp_path / "a.txt", "rewritten\n")  # replacing keeps the umask's mode too
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == 0o666 & ~umask
    assert mode(tmp_path / "b.bin") == 0o666 & ~umask
    assert mode(tmp_path / "datadir") == 0o777 & ~umask
    assert mode(tmp_path / "datadir" / "wav.scp") == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp names left behind
