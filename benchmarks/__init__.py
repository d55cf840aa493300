"""Speed and scaling measurements (scripts, not tests); ``python -m benchmarks`` runs the suite.

OpenMP threads wait passively here unless the caller sets ``OMP_WAIT_POLICY``: on a 2-core machine
shared with other processes, torch's default spinning OpenMP barriers make small kernels with 2
threads 10-100x slower (measured: small FB-M update 3.56 s instead of 0.032 s at load 4.5).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
