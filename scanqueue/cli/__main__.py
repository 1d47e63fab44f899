"""``python -m scanqueue.cli``: the same as the ``scanqueue`` console script."""

import sys

from scanqueue.cli import main

sys.exit(main())
