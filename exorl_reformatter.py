"""Download, collect and reformat ExORL datasets: `python exorl_reformatter.py --help`.

The code is `bfm/cli/reformat.py`; after `pip install -e .` the same program is the `exorl_reformatter` command.
"""

import sys

from bfm.cli.reformat import main

if __name__ == "__main__":
    sys.exit(main())
