"""Local data collection: the RND explorer, episode collection into the ExORL layout, and tiny
synthetic datasets for tests and smoke runs.

It sits above ``data/`` (formats, reformatting) and ``agents/`` (nothing here is imported by
either): ``exorl_reformatter.py --collect`` and the tests use it.
"""

from bfm.collection.collect import COLLECT_ALGOS, collect
from bfm.collection.rnd import RND_PRESETS, RNDAgent, RNDConfig, rnd_config
from bfm.collection.synthetic import make_synthetic_dataset

__all__ = [
    "COLLECT_ALGOS",
    "RND_PRESETS",
    "RNDAgent",
    "RNDConfig",
    "collect",
    "make_synthetic_dataset",
    "rnd_config",
]
