"""Execute the notebooks and store them with their outputs and a stamp.

Usage: ``python notebooks/execute.py [NOTEBOOK...]`` (default: every notebook here). Each runs
in a temporary working directory; see :mod:`lsdask.testing.notebooks`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this repository's lsdask

from lsdask.testing.notebooks import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
