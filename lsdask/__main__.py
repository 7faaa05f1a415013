"""``python -m lsdask`` is the ``lsdask`` command."""

import sys

from .cli import main

sys.exit(main())
