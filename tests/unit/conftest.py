"""Put the repository root on sys.path so tests import `filter_plugins.<name>` directly, and the
slot engine's package (installed on hosts by the slot_engine role) as `fleet_slots`."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
ENGINE = ROOT / "roles" / "slot_engine" / "files"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))
