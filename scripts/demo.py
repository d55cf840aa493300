"""The `make demo` run: collect a small walker dataset with the CPU-sized RND explorer, train
memory-free FB on fully observed walker, evaluate it zero-shot on stand / walk / run / flip, print
the results and write a learning curve.

Every step goes through the project's real command lines, so the numbers come from the real
pipeline (about 15 minutes on 2 CPU cores):

1. ``exorl_reformatter.py walker_rnd --collect --explorer cpu``: 50 episodes x 1000 steps of the
   RND explorer (URLB's algorithm at width 128, see docs/datasets.md, "Collecting on a CPU") in the real
   walker, reformatted with every task reward relabelled from physics and its coverage printed.
2. ``main_exorl.py fb walker rnd experiment=cpu``: FB at the CPU preset's widths and learning
   rates, evaluated at step 0 and every ``--eval_frequency`` steps with 5 full 1000-step episodes per task.
3. ``plot_results.py``: the result table (``report.md``) and ``learning_curves.png``.
4. ``evaluate.py``: the trained walker prompted with a built-in task (stand) and a reward formula
   it never saw (``PROMPT``), with a video and a filmstrip of one episode each (skipped, with a
   note, where MuJoCo finds no OpenGL backend).

Outputs go to ``runs/demo/`` (the demo's own run directory is replaced on each call; pass
``--keep`` to continue it instead). The dataset is kept in ``datasets/cpu/`` and reused (a later
``--collect_steps`` that asks for more episodes extends the same collection).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bfm.envs.render import RenderError, check_gl  # noqa: E402 (the repository root is put on the path above)

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("stand", "walk", "run", "flip")
EPISODES = 50  # about 6 minutes of collection on one core
LEARNING_STEPS = 15_000
EVAL_FREQUENCY = 3000
# A reward the training never named: the torso upside down (docs/using_a_trained_model.md).
PROMPT = "headstand = torso_upright < -0.8"


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
    parser.add_argument("--data_dir", default="datasets/cpu", help="dataset root (default: datasets/cpu)")
    parser.add_argument("--out", default="runs/demo", help="demo output directory (default: runs/demo)")
    parser.add_argument(
        "--episodes", type=int, default=EPISODES, help=f"episodes to collect (default {EPISODES})"
    )
    parser.add_argument(
        "--learning_steps",
        type=int,
        default=LEARNING_STEPS,
        help=f"gradient steps (default {LEARNING_STEPS})",
    )
    parser.add_argument(
        "--eval_frequency", type=int, default=EVAL_FREQUENCY, help=f"default {EVAL_FREQUENCY}"
    )
    parser.add_argument(
        "--keep", action="store_true", help="continue an earlier demo run instead of replacing it"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    out = ROOT / args.out
    run_dir = out / "fb_walker"
    if run_dir.exists() and not args.keep:  # its evaluations/ go with it
        shutil.rmtree(run_dir)
    run(
        [
            "exorl_reformatter.py",
            "walker_rnd",
            "--collect",
            "--explorer=cpu",
            f"--collect_steps={1000 * args.episodes}",
            f"--data_dir={args.data_dir}",
        ]
    )
    run(
        [
            "main_exorl.py",
            "fb",
            "walker",
            "rnd",
            "experiment=cpu",
            "--eval_task",
            *TASKS,
            f"--episodes={args.episodes}",
            f"--learning_steps={args.learning_steps}",
            f"--eval_frequency={args.eval_frequency}",
            f"--data_dir={args.data_dir}",
            f"--run_dir={run_dir.relative_to(ROOT)}",
        ]
    )
    run(["plot_results.py", str(run_dir.relative_to(ROOT)), "--out", str((out / "report").relative_to(ROOT))])
    video = ["--video=1", "--video_every=5"]
    try:
        check_gl()
    except RenderError as error:
        print(f"\nno video: {error}", flush=True)
        video = []
    run(
        [
            "evaluate.py",
            str(run_dir.relative_to(ROOT)),
            "--tasks=stand",
            f"--reward={PROMPT}",
            "--rollouts=2",
            *video,
            "--name=demo",
        ]
    )
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"run directory: {run_dir}  (results.json, eval.csv, train.csv, checkpoints/)")
    print(f"learning curve: {out / 'report' / 'learning_curves.png'}")
    print(f"prompted: {run_dir / 'evaluations' / 'demo'}  (results.json, episodes.csv, videos/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
