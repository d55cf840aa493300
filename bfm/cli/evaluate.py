"""Use a trained model: evaluate a run's checkpoint again, prompt it with any reward or goal, watch it.

    python evaluate.py RUN                                      # the run's own tasks, newest intact checkpoint
    python evaluate.py RUN --step 20000 --domain walker_noise --tasks stand walk --multipliers 1.0 1.5 --rollouts 10
    python evaluate.py RUN --reward my_rewards.py:backflip      # a reward function the user writes
    python evaluate.py RUN --reward "(torso_height > 1.3) & (abs(horizontal_velocity) < 0.2)"
    python evaluate.py RUN --goal 17:400                        # reach the state of episode 17, step 400
    python evaluate.py RUN --tasks walk --video 2               # MP4s and filmstrips of two episodes per task

Results go to ``RUN/evaluations/<name>/`` (``results.json``, ``episodes.csv`` with every episode's
return, ``videos/``); the training files are never touched. Reward features per domain:
``--features``. The code behind it is ``bfm.training.prompting.TrainedModel``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bfm.cli import errors
from bfm.data.exorl import DatasetError
from bfm.envs.prompts import FEATURE_DOCS, FORMULA_FUNCTIONS, PromptError
from bfm.envs.render import RenderError
from bfm.training.config import ConfigError
from bfm.training.prompting import TrainedModel, evaluation_folder

PROG = "evaluate.py"
log = logging.getLogger("evaluate")


def build_parser() -> errors.Parser:
    p = errors.Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Formulas use the domain's features (--features), numbers, + - * / ** % < <= > >= == != & | ~, "
        f"tolerance(x, lower, upper, margin=0, sigmoid='gaussian', value_at_margin=0.1) and {', '.join(FORMULA_FUNCTIONS)}.",
    )
    p.add_argument("run_dir", nargs="?", help="a run directory of main_exorl.py (finished or interrupted)")
    p.add_argument("--step", type=errors.int_at_least(0), help="checkpoint step (default: the newest intact)")
    p.add_argument(
        "--domain", help="evaluation domain: the run's, or another POMDP variant of its base domain"
    )
    p.add_argument(
        "--tasks", "--task", nargs="+", help="built-in tasks (default: the run's, or none with prompts)"
    )
    p.add_argument(
        "--reward",
        action="append",
        default=[],
        help="[NAME=]FORMULA or [NAME=]FILE.py:FUNCTION (repeat for several)",
    )
    p.add_argument(
        "--goal", action="append", default=[], help="EPISODE:STEP of the run's data, or an .npy observation"
    )
    p.add_argument(
        "--goal_threshold", type=float, help="posture distance counted as reached (default: data-relative)"
    )
    p.add_argument("--multipliers", type=float, nargs="+", help="dynamics multipliers (default: the run's)")
    p.add_argument("--rollouts", type=errors.int_at_least(1), help="episodes per prompt and multiplier")
    p.add_argument("--rollout_memory", choices=("sliding", "carry"), help="default: the run's")
    p.add_argument("--seed", type=errors.int_at_least(0), help="evaluation seed (default: the run's)")
    p.add_argument(
        "--z_inference_steps", type=errors.int_at_least(1), help="labelled windows per z (default: the run's)"
    )
    p.add_argument(
        "--video", type=errors.int_at_least(0), default=0, help="episodes per prompt to render (MP4 + PNG)"
    )
    p.add_argument(
        "--video_every", type=errors.int_at_least(1), default=4, help="render every N-th step (default 4)"
    )
    p.add_argument("--video_size", default="320x240", help="WIDTHxHEIGHT of the frames (default 320x240)")
    p.add_argument("--name", help="output folder name under RUN/evaluations (default step<N>_<domain>[_k])")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--data_dir", help="where the run's dataset lies now, if it moved")
    p.add_argument(
        "--features", metavar="DOMAIN", help="print the reward features of DOMAIN with units, and exit"
    )
    return p


def features_table(domain: str) -> str:
    """The reward features of ``domain`` a prompt may use, with their units."""
    if domain not in FEATURE_DOCS:
        errors.fail(PROG, f"unknown domain {domain!r}; accepted: {', '.join(FEATURE_DOCS)}")
    return "\n".join(f"{name:<22}{doc}" for name, doc in FEATURE_DOCS[domain].items())


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        width = height = 0
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        errors.fail(PROG, f"--video_size {text!r}: expected WIDTHxHEIGHT, each 16..4096 (e.g. 320x240)")
    return width, height


def run(args: argparse.Namespace) -> int:
    model = TrainedModel.load(args.run_dir, args.step, args.device, args.data_dir)
    domain = args.domain or model.cfg.env.domain
    goals = [model.goal(g, args.goal_threshold, domain) for g in args.goal]
    folder = evaluation_folder(model.run_dir, args.name, model.step, domain)
    evaluation = model.evaluate(
        tasks=args.tasks,
        rewards=args.reward,
        goals=goals,
        domain=domain,
        multipliers=args.multipliers,
        rollouts=args.rollouts,
        rollout_memory=args.rollout_memory,
        seed=args.seed,
        z_inference_steps=args.z_inference_steps,
        video=args.video,
        video_every=args.video_every,
        video_size=_size(args.video_size),
        out=folder,
    )
    print(evaluation.table())
    print(f"\nwritten: {folder}" + (f" (videos: {len(evaluation.videos) // 2})" if evaluation.videos else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    errors.setup_logging("%(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if args.features:
        print(features_table(args.features))
        return 0
    if not args.run_dir:
        errors.fail(PROG, "give a run directory (or --features DOMAIN); see --help")
    if args.goal_threshold is not None and not args.goal_threshold > 0:
        errors.fail(PROG, f"--goal_threshold must be > 0, got {args.goal_threshold}")
    try:
        with errors.reported(PROG, ConfigError, PromptError, RenderError, DatasetError):
            try:
                return run(args)
            except (MemoryError, RuntimeError) as error:
                if not errors.out_of_memory(error):
                    raise
                raise ConfigError(
                    f"out of memory ({errors.one_line(error)[:160]}); use fewer --rollouts or --z_inference_steps"
                ) from error
    except KeyboardInterrupt:
        errors.fail(
            PROG,
            "interrupted; nothing was written to the run directory: rerun the command to evaluate again",
            errors.EXIT_INTERRUPTED,
        )


if __name__ == "__main__":
    sys.exit(main())
