"""``python -m sensfind.tuning ARGS``, the same as ``sensfind tune ARGS``."""

import sys

from sensfind.tuning._cli import main

sys.exit(main())
