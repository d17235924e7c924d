"""`python -m engage_listener` runs the command line."""

import sys

from engage_listener.ops.cli import main

sys.exit(main())
