"""What "done" means, the same way for every stage.

A product is done when it exists, validates, and was made from the inputs that exist now.
A stage describes its inputs as a JSON-able value (file checksums, options);
:func:`fingerprint` hashes it. When a task succeeds it writes a *stamp* beside its product
(:func:`write_stamp`): the fingerprint and the size of every product file. :func:`stamp_ok`
is the cheap check on the hot path (stamp present, fingerprint equal, every file there with
its size: a truncated or deleted file fails it); :func:`verify_sha256sum` checks a brick's own
``brick-<brick>.sha256sum`` (fully, or only the files named).

No Dask and no ledger here: processors and stages both use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .atomic import sha256_file, write_text_atomic

#: Fingerprint of an input file that does not exist.
MISSING = "missing"

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (cached per process by path, size and mtime), or :data:`MISSING`."""
    p = str(path)
    try:
        st = os.stat(p)
    except OSError:
        return MISSING
    k = (p, st.st_size, st.st_mtime_ns)
    v = _SHA_CACHE.get(k)
    if v is None:
        try:
            v = sha256_file(p)
        except OSError:
            return MISSING
        if len(_SHA_CACHE) > 100_000:
            _SHA_CACHE.clear()
        _SHA_CACHE[k] = v
    return v


def fingerprint(inputs: Any) -> str:
    """A short hash of a JSON-able description of a product's inputs."""
    text = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_stamp(path: str | os.PathLike) -> dict | None:
    """The stamp at ``path`` or None (absent or unreadable)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def write_stamp(path: str | os.PathLike, fp: str, files: Iterable[str | os.PathLike] = (),
                **extra: Any) -> None:
    """Record (atomically) that the products ``files`` were made from inputs ``fp``."""
    sizes = {}
    for f in files:
        sizes[str(f)] = os.stat(f).st_size
    write_text_atomic(path, json.dumps({"inputs": fp, "sizes": sizes, **extra}, indent=0))


def remove_stamp(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def stamp_ok(path: str | os.PathLike, fp: str | None) -> bool:
    """The stamp exists, records inputs ``fp`` (None: any), and every product file it lists
    exists with the size it had when made."""
    d = read_stamp(path)
    if d is None or (fp is not None and d.get("inputs") != fp):
        return False
    for f, size in (d.get("sizes") or {}).items():
        try:
            if os.stat(f).st_size != size:
                return False
        except OSError:
            return False
    return True


def sha256sum_entries(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(hex digest, relative path) of each line of a ``sha256sum``-format file."""
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            out.append((parts[0], parts[1].strip().lstrip("*")))
    return out


def verify_sha256sum(path: str | os.PathLike, root: str | os.PathLike,
                     full: Iterable[str] | None = None) -> str | None:
    """Check a ``sha256sum`` file whose paths are relative to ``root``: every file listed
    exists; the files whose names end with one of ``full`` (None: all) hash to the digest
    listed. Returns None when it verifies, else what is wrong (one line)."""
    try:
        entries = sha256sum_entries(path)
    except (OSError, UnicodeDecodeError) as e:
        return f"{path}: unreadable ({e})"
    if not entries:
        return f"{path}: empty"
    ends = None if full is None else tuple(full)
    for digest, rel in entries:
        p = Path(root) / rel
        if not p.is_file():
            return f"{p}: listed in {Path(path).name} but missing"
        if ends is None or rel.endswith(ends):
            if file_sha256(p) != digest:
                return f"{p}: sha256 does not match {Path(path).name} (damaged)"
    return None


def sha256sum_files(path: str | os.PathLike, root: str | os.PathLike) -> list[Path]:
    """The files a ``sha256sum`` file lists (absolute)."""
    return [Path(root) / rel for _, rel in sha256sum_entries(path)]


def clean_temps(*dirs: str | os.PathLike, recursive: bool = False) -> int:
    """Remove the hidden temporary files (``.<stem>.tmp-<id>...``) that atomic writes of a
    killed run left in ``dirs``; returns how many. Call it only holding the release lock."""
    n = 0
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in (d.rglob(".*.tmp-*") if recursive else d.glob(".*.tmp-*")):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n
