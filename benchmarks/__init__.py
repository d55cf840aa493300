"""Speed and scaling measurements (scripts, not tests); ``python -m benchmarks`` runs the suite.

OpenMP wait policy: unless the caller sets ``OMP_WAIT_POLICY``, threads wait passively when the
machine is already busy at start (1-minute load average above 1). On a 2-core machine shared with
other processes, libgomp's default spinning barriers make small kernels with 2 threads 10-100x
slower (measured: small FB-M update 3.56 s instead of 0.032 s at load 4.5); on an idle machine
spinning is 2.5x faster for the small preset (0.016 s vs 0.040 s). Large (paper-size) kernels
do not care. The policy used is recorded in the results.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and hasattr(os, "getloadavg") and os.getloadavg()[0] > 1.0:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
