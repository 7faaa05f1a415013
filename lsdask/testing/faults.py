"""Figures of the fault suite (``tests/test_fault_suite.py``): kills survived / tried, bad
inputs answered with a clear one-line message / tried, tasks lost, tasks completed twice.
The suite's tests add to :data:`FIGURES`; ``tests/conftest.py`` prints :func:`summary`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Figures:
    kills_tried: int = 0
    kills_survived: int = 0
    bad_tried: int = 0
    bad_clear: int = 0
    lost: int = 0
    twice: int = 0

    def kill(self, survived: bool) -> None:
        self.kills_tried += 1
        self.kills_survived += int(bool(survived))

    def bad(self, clear: bool) -> None:
        self.bad_tried += 1
        self.bad_clear += int(bool(clear))

    def summary(self) -> str:
        return (f"fault suite: kills survived {self.kills_survived}/{self.kills_tried}, "
                f"bad inputs with a clear one-line message {self.bad_clear}/{self.bad_tried}, "
                f"tasks lost {self.lost}, tasks completed twice {self.twice}")


FIGURES = Figures()


def one_line(text: str) -> bool:
    """Exactly one non-empty line, and no traceback."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return len(lines) == 1 and "Traceback" not in text
