"""Files only their owner may read: state, logs and credentials (issue 41).

Stores, failure counts, worker logs and credentials name principals, accounts and secrets,
so every directory the bank makes for them is 0700 and every credentials file 0600, from
the moment it exists.
"""
from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: str | os.PathLike[str]) -> Path:
    """A directory only its owner may enter (made so, or made so now); the directories it
    makes on the way are the owner's only too (mkdir's `parents` would make them 0755)."""
    path = Path(path).absolute()
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """A file readable by its owner only from the moment it exists (in a directory only the
    owner may enter), replaced whole."""
    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)
