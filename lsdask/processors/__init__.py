"""Processors: what runs inside one task.

A processor takes paths and options, writes its products atomically and
returns a small, picklable summary dict. It knows nothing of Dask, the ledger
or the runner. ``lite`` is the embedded pure-Python processor; ``legacypipe``
runs the real legacypipe/legacyzpts as child processes through a launcher.
Each stage may use its own processor (:class:`ProcessorRef`: a name and the
processor's settings, e.g. the ``[legacypipe]`` section, passed to every call
as ``settings=`` when not None).

Interface (module-level functions of ``lsdask.processors.<name>``)::

    calibs_done(layout, image_filename) -> bool
    run_calibs(layout, image_filename, options: CalibsOptions) -> dict
    zeropoints_done(layout, image_filename) -> bool
    run_zeropoints(layout, image_filename, options: ZeropointsOptions) -> dict
    runbrick_done(layout, brickname) -> bool
    run_runbrick(layout, brickname, ccds: numpy structured array of survey-ccds rows,
                 bands, options: RunbrickOptions, release: int, config_hash: str) -> dict

"Done" (the stage protocol, :mod:`lsdask.graphs.base`): ``<stage>_done`` says whether the
processor's product *exists and validates* (a catalogue that opens and names its brick, a
calibration file that reads), cheaply: it is called at every plan. Whether it was made from
the inputs there now is the stage's part, not the processor's: for runbrick the stage keeps
an input stamp beside the product (``layout.brick_stamp``: exposures and zeropoint-table
checksums, product sizes) and checks the tractor file against ``brick-<brick>.sha256sum``,
which ``run_runbrick`` must write (``<sha256>  <path relative to the release dir>`` per
product). A new processor implements ``*_done`` this way and writes every product
atomically (temporary name, then rename); processes it forks die with the task and do not
keep its brick lock (:data:`lsdask.task.PRIVATE_FDS`).

Failures raise: ``lsdask.errors.InputError`` for bad inputs (corrupt or
missing files: never retried), :class:`BrickMemoryError` when the memory
estimate exceeds the limit (retried with fewer threads), anything else is a
generic error.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import LsdaskError


class BrickMemoryError(MemoryError, LsdaskError):
    """The task would exceed its memory limit; retry it with fewer threads."""


def get_processor(name: str) -> ModuleType:
    """The processor module by name (``lite``, ``legacypipe``)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        from ..errors import ConfigError

        raise ConfigError(f"unknown processor {name!r} ({e})") from None


@dataclass(frozen=True)
class ProcessorRef:
    """A processor by name with its settings (picklable; sent to the task process)."""

    name: str
    settings: Any = None

    def call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """``lsdask.processors.<name>.<fn>(*args, **kwargs, settings=...)``."""
        if self.settings is not None:
            kwargs["settings"] = self.settings
        return getattr(get_processor(self.name), fn)(*args, **kwargs)

    def has(self, attr: str) -> Any:
        """A module attribute of the processor (None when it has none)."""
        return getattr(get_processor(self.name), attr, None)
