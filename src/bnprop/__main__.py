"""``python -m bnprop``."""

import sys

from bnprop.cli import main

sys.exit(main())
