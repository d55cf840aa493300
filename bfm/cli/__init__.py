"""The command-line programs: ``train`` (``main_exorl``), ``reformat`` (``exorl_reformatter``)
and ``report`` (``plot_results``). Each is a console script and a thin script at the repository
root, so ``python main_exorl.py ...`` works from a checkout without installing."""
