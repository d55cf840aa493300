"""Use a trained model (re-evaluate, prompt with a reward or goal, render videos): `python evaluate.py --help`.

The code is `bfm/cli/evaluate.py`; after `pip install -e .` the same program is the `bfm_evaluate` command.
"""

import sys

from bfm.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
