"""The `make demo` run: collect a small walker dataset, train FB-M (GRU) on walker_flickering,
evaluate zero-shot on stand / walk / run / flip, print the results and write a learning curve.

Every step goes through the project's real command lines, so the numbers come from the real
pipeline (scaled down by the ``experiment=demo`` preset; about 5-10 minutes on 2 CPU cores):

1. ``exorl_reformatter.py walker_random --collect``: 100 episodes x 1000 steps of uniform random
   actions in the real walker, reformatted with every task reward relabelled from physics. (The
   paper's datasets are ExORL RND ones; the local RND explorer is too slow for a CPU demo.)
2. ``main_exorl.py fb_m walker_flickering random experiment=demo --memory_type gru``: 3000
   gradient steps, evaluated at steps 0, 1000, 2000, 3000 with 5 full 1000-step episodes per task.
3. ``plot_results.py``: the result table (``report.md``) and ``learning_curves.png``.

Outputs go to ``runs/demo/`` (the demo's own run directory is replaced on each call; pass
``--keep`` to continue it instead). The dataset is kept in ``datasets/`` and reused.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("stand", "walk", "run", "flip")


def run(args: list[str]) -> None:
    """Runs one of the project's CLIs with this interpreter, streaming its output."""
    print(f"\n$ {' '.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        check=True,
    )
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="datasets", help="dataset root (default: datasets)")
    parser.add_argument("--out", default="runs/demo", help="demo output directory (default: runs/demo)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes to collect (default 100)")
    parser.add_argument("--learning_steps", type=int, default=3000, help="gradient steps (default 3000)")
    parser.add_argument(
        "--keep", action="store_true", help="continue an earlier demo run instead of replacing it"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    out = ROOT / args.out
    run_dir = out / "fb_m_gru_walker_flickering"
    if run_dir.exists() and not args.keep:
        shutil.rmtree(run_dir)
    run(
        [
            "exorl_reformatter.py",
            "walker_random",
            "--collect",
            f"--collect_steps={1000 * args.episodes}",
            f"--data_dir={args.data_dir}",
        ]
    )
    run(
        [
            "main_exorl.py",
            "fb_m",
            "walker_flickering",
            "random",
            "experiment=demo",
            "--memory_type=gru",
            "--eval_task",
            *TASKS,
            f"--episodes={args.episodes}",
            f"--learning_steps={args.learning_steps}",
            "--eval_frequency=1000",
            "--eval_rollouts=5",
            f"--data_dir={args.data_dir}",
            f"--run_dir={run_dir.relative_to(ROOT)}",
        ]
    )
    run(["plot_results.py", str(run_dir.relative_to(ROOT)), "--out", str((out / "report").relative_to(ROOT))])
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"run directory: {run_dir}  (results.json, eval.csv, train.csv, checkpoints/)")
    print(f"learning curve: {out / 'report' / 'learning_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
