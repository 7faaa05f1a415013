"""Atomic file products: write to a temporary name in the same folder, then rename.

A product either exists whole or not at all, so "the file exists and validates"
can mean "done".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temp_name(path: str | os.PathLike) -> Path:
    """A unique temporary sibling of ``path`` that keeps its suffixes (``.fits.gz`` ...).

    cfitsio decides compression from the suffix, so the suffix must survive.
    """
    path = Path(path)
    name = path.name
    stem, dot, suffix = name.partition(".")
    return path.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:12]}{dot}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; rename it onto ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
