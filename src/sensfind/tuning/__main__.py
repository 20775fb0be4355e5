"""``python -m sensfind.tuning ARGS``, the same as ``sensfind tune ARGS``."""

import sys

from ._cli import main

sys.exit(main())
