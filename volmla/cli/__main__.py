"""``python -m volmla.cli``: the same entry point as the ``volmla`` script."""

import sys

from volmla.cli import main

sys.exit(main())
