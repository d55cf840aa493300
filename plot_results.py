"""Figures and tables of finished runs: `python plot_results.py --help`.

The code is `bfm/cli/report.py`; after `pip install -e .` the same program is the `plot_results` command.
"""

import sys

from bfm.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
