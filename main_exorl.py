"""Train and evaluate behaviour foundation models with memory on ExORL data: `python main_exorl.py --help`.

The code is `bfm/cli/train.py`; after `pip install -e .` the same program is the `main_exorl` command.
"""

from bfm.cli.train import cli

if __name__ == "__main__":
    cli()
