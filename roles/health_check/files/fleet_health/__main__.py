"""python3 -m fleet_health: the checker's command line."""

import sys

from .cli import main

sys.exit(main())
