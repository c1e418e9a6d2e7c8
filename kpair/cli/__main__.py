"""`python -m kpair.cli`: the `kpair` command."""

import sys

from kpair.cli import main

sys.exit(main())
