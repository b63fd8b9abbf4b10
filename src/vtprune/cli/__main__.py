"""``python -m vtprune.cli``: same as the ``vtprune`` script."""

import sys

from . import main

sys.exit(main())
