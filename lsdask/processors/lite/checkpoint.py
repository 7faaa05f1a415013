"""Brick checkpoints: the coadds (and what made them), pickled atomically.

A checkpoint carries a key (hash of the brick, the CCDs used, the options that
change the coadds and the code version); a checkpoint with another key is
ignored, so a changed input never resumes from stale pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path
from typing import Any

from ...atomic import atomic_path

log = logging.getLogger(__name__)

VERSION = 1


def checkpoint_key(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def save(path: Path, key: str, stage: str, payload: dict) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump({"version": VERSION, "key": key, "stage": stage, "payload": payload}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load(path: Path, key: str) -> tuple[str, dict] | None:
    """(stage, payload) of a matching checkpoint, else None (unreadable ones are ignored)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            d = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - a broken checkpoint is only a lost shortcut
        log.warning("%s: unreadable checkpoint ignored (%s)", path, e)
        return None
    if not isinstance(d, dict) or d.get("version") != VERSION or d.get("key") != key:
        log.info("%s: checkpoint from other inputs/options ignored", path)
        return None
    return d["stage"], d["payload"]


def remove(path: Path) -> None:
    Path(path).unlink(missing_ok=True)
