"""`python3 -m lab ...` from the repository root."""

from lab.fleetlab import main

raise SystemExit(main())
