"""`python -m latentdiff.cli ARGS` (as `accelerate launch -m latentdiff.cli train ...` runs it)."""

import sys

from . import main

sys.exit(main())
