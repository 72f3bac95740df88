"""``python -m vaekit`` (and ``torchrun -m vaekit``) run the command line."""

import sys

from vaekit.cli import main

sys.exit(main())
