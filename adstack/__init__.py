"""adstack: autonomous-driving perception and planning stack (shared core)."""

import os

# torch's OpenMP workers spin while they wait by default; on a busy 2-core machine that turned a
# 35 ms detection into a second. Passive waiting costs nothing when the machine is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
