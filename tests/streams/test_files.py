"""State, logs and credentials are their owner's only (issue 41)."""
from __future__ import annotations

import os

from kbank.streams.files import private_dir, write_private


def test_private_dirs_and_every_directory_made_on_the_way_are_0700(tmp_path):
    os.umask(0o022)
    leaf = private_dir(tmp_path / "a" / "b" / "c")
    for path in (leaf, leaf.parent, leaf.parent.parent):
        assert path.stat().st_mode & 0o777 == 0o700, path
    (tmp_path / "open").mkdir(mode=0o755)
    assert private_dir(tmp_path / "open").stat().st_mode & 0o777 == 0o700   # made so now


def test_private_files_are_0600_from_the_start(tmp_path):
    write_private(tmp_path / "creds" / "x.properties", "a=b\n")
    assert (tmp_path / "creds" / "x.properties").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "creds").stat().st_mode & 0o777 == 0o700
