"""bfm: behaviour foundation models with memory for zero-shot RL under partial observability.

A reimplementation of "Zero-Shot Reinforcement Learning Under Partial Observability" (Jeen,
Bewley, Cullen; arXiv 2506.15446). Subpackages, each importing only those listed before it:

- ``bfm.envs``: dm_control domains, task rewards, POMDP transforms, batched evaluation;
- ``bfm.memory``: memory models (GRU, transformer, S4d, MLP frame stacking);
- ``bfm.data``: ExORL datasets (download, reformat) and the sequence buffer;
- ``bfm.agents``: FB and HILP, with or without memory;
- ``bfm.collection``: local data collection (random, RND explorer) and synthetic datasets;
- ``bfm.training``: run config, trainer, evaluation, checkpoints, logging;
- ``bfm.cli``: the three commands (``main_exorl``, ``exorl_reformatter``, ``plot_results``).

Importing ``bfm`` itself loads nothing heavy; import a subpackage to use it.
"""

__version__ = "0.1.0"
