"""Download, collect and reformat ExORL datasets into ``<data_dir>/<domain>/<algo>/buffer/dataset.npz``.

    python exorl_reformatter.py walker_rnd [cheetah_rnd ...] [--data_dir datasets] [--episodes N]
    python exorl_reformatter.py walker_rnd --collect --collect_steps 200000 --multiplier 1.5
    python exorl_reformatter.py walker_rnd --collect --explorer cpu --collect_steps 300000

For each DOMAIN_ALGO pair: if raw episode files exist in ``<data_dir>/<domain>/<algo>/buffer/``
they are reformatted; otherwise the public ExORL archive is downloaded (resumable), extracted and
reformatted; with ``--collect`` the episodes are generated locally (``random`` or ``rnd``) first.
``--explorer cpu`` shrinks the RND explorer so that a 2-core CPU collects in minutes, not days.
Rewards of every task of the domain with a reward function (``DOMAINS[domain].reward_tasks``) are
relabelled from the stored physics. Running it again with nothing new does nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import urllib.parse
from pathlib import Path

import torch

from bfm.cli import errors
from bfm.collection import COLLECT_ALGOS, RND_PRESETS, collect, rnd_config
from bfm.data.download import (
    EXORL_ALGOS,
    EXORL_BASE_URL,
    DownloadError,
    archive_url,
    download,
    extract_archive,
)
from bfm.data.exorl import (
    EPISODE_SELECTIONS,
    DatasetError,
    buffer_dir,
    dataset_path,
    list_episode_files,
    read_manifest,
)
from bfm.data.reformat import DOWNLOAD_FILE, reformat
from bfm.envs import DOMAINS
from bfm.files import file_in_the_way, unwritable
from bfm.training.builders import resolve_device
from bfm.training.config import ConfigError
from bfm.training.run_dir import locked

PROG = "exorl_reformatter.py"
logger = logging.getLogger("exorl_reformatter")


def parse_pair(pair: str) -> tuple[str, str]:
    """Split ``walker_rnd`` / ``quadruped_icm_apt`` into (domain, algo) by the known domain prefix."""

    for domain in sorted(DOMAINS, key=len, reverse=True):
        if pair.startswith(domain + "_") and len(pair) > len(domain) + 1:
            return domain, pair[len(domain) + 1 :]
    raise argparse.ArgumentTypeError(
        f"{pair!r} is not DOMAIN_ALGO with DOMAIN in {', '.join(DOMAINS)} (e.g. walker_rnd)"
    )


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


positive_int = errors.int_at_least(1)
non_negative_int = errors.int_at_least(0)


def build_parser() -> errors.Parser:
    parser = errors.Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "pairs", nargs="+", type=parse_pair, metavar="DOMAIN_ALGO", help="e.g. walker_rnd cheetah_rnd"
    )
    parser.add_argument("--data_dir", default="datasets", help="dataset root (default: datasets)")
    parser.add_argument(
        "--episodes", type=positive_int, default=None, help="keep N of the episodes (default: all)"
    )
    parser.add_argument(
        "--episode_selection",
        choices=EPISODE_SELECTIONS,
        default="spread",
        help="which N episodes --episodes keeps: spread evenly over the collection (default) or the first N",
    )
    parser.add_argument(
        "--delete_raw", action="store_true", help="delete the raw episode files after reformatting"
    )
    parser.add_argument(
        "--base_url", default=EXORL_BASE_URL, help=f"archive host (default: {EXORL_BASE_URL})"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=os.cpu_count(), help="processes for relabelling"
    )
    parser.add_argument(
        "--collect", action="store_true", help="collect the episodes locally instead of downloading"
    )
    parser.add_argument(
        "--collect_steps", type=positive_int, default=1_000_000, help="environment steps to collect"
    )
    parser.add_argument(
        "--episode_length", type=positive_int, default=1000, help="transitions per collected episode"
    )
    parser.add_argument(
        "--multiplier", type=positive_float, default=1.0, help="mass and damping multiplier of collection"
    )
    parser.add_argument(
        "--explorer",
        choices=sorted(RND_PRESETS),
        default="urlb",
        help="RND explorer size: urlb (URLB's, a GPU job) or cpu (small, for a 2-core CPU); default urlb",
    )
    parser.add_argument(
        "--rnd_hidden_dim", type=positive_int, help="RND explorer width (overrides --explorer)"
    )
    parser.add_argument(
        "--rnd_batch_size", type=positive_int, help="RND explorer batch size (overrides --explorer)"
    )
    parser.add_argument(
        "--rnd_update_every",
        type=positive_int,
        help="environment steps per RND explorer update (overrides --explorer)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="collection seed (>= 0)")
    parser.add_argument("--device", default="cpu", help="torch device of the RND explorer")
    parser.add_argument(
        "--torch_threads",
        type=positive_int,
        default=1,
        help="CPU threads of the RND explorer (default 1: its small matmuls gain nothing from a second "
        "thread, and two threads collapse when another process holds a core)",
    )
    return parser


def explorer_config(args: argparse.Namespace):
    """The RND explorer settings: the ``--explorer`` preset with the ``--rnd_*`` flags applied."""
    return rnd_config(
        args.explorer,
        hidden_dim=args.rnd_hidden_dim,
        batch_size=args.rnd_batch_size,
        update_every_steps=args.rnd_update_every,
    )


def process(domain: str, algo: str, args: argparse.Namespace) -> Path:
    """Make ``dataset.npz`` of one pair: collect or download if needed, then reformat; one process
    at a time per dataset folder (a second is refused, naming the first)."""
    folder = buffer_dir(args.data_dir, domain, algo, args.multiplier)
    with locked(folder, "dataset folder"):
        return _process(domain, algo, args, folder)


def _process(domain: str, algo: str, args: argparse.Namespace, folder: Path) -> Path:
    out = dataset_path(args.data_dir, domain, algo, args.multiplier)
    source: dict | None = None
    if args.collect:
        collect(
            folder,
            domain,
            algo,
            args.collect_steps,
            args.seed,
            args.multiplier,
            args.episode_length,
            rnd_config=explorer_config(args),
            device=args.device,
        )
        source = {"kind": "collected"}
    else:
        archive = Path(args.data_dir) / domain / f"{algo}.zip"
        if not list_episode_files(folder) or archive.is_file():
            misnamed = sorted(p.name for p in folder.glob("*.npz") if p.name != out.name)
            if misnamed and not archive.is_file():
                raise DatasetError(
                    f"{folder}: {len(misnamed)} .npz file(s) ({', '.join(misnamed[:3])}) not named like raw "
                    "episodes, <prefix>_<index>_<length>.npz (e.g. episode_000000_1000.npz); rename them to "
                    "reformat them, or move them away to download ExORL's archive instead"
                )
            if out.is_file() and not archive.is_file():
                try:
                    read_manifest(out)  # raises on a corrupt or foreign file
                except DatasetError as error:
                    raise DatasetError(
                        f"{error}; there are no raw episodes in {folder} to rebuild it from: delete {out} and "
                        "rerun this command to download them again (or add --collect to collect them)"
                    ) from None
                logger.info("%s exists and there are no raw episodes; nothing to do", out)
                return out
            if args.multiplier != 1.0:
                raise DatasetError(
                    f"no raw episodes in {folder}; changed-dynamics data is not public, collect it with:\n"
                    f"    python exorl_reformatter.py {domain}_{algo} --collect --multiplier {args.multiplier:g}"
                )
            if algo not in EXORL_ALGOS:
                raise DatasetError(
                    f"no raw episodes in {folder} and ExORL publishes no {algo!r} dataset; "
                    f"ExORL datasets: {', '.join(EXORL_ALGOS)} (or collect one: --collect with "
                    "random or rnd)"
                )
            url = archive_url(args.base_url, domain, algo)
            download(url, archive)
            extract_archive(archive, folder.parent)
            source = {"kind": "exorl-download", "url": url}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / DOWNLOAD_FILE).write_text(json.dumps(source))
            archive.unlink()
    return reformat(
        folder, domain, algo, multiplier=args.multiplier, episodes=args.episodes, source=source,
        workers=args.workers, delete_raw=args.delete_raw,
    )  # fmt: skip


def check_args(args: argparse.Namespace) -> None:
    """What can be refused before anything is downloaded, collected or written.

    Raises:
        ConfigError: naming the flag or pair and what is accepted.
    """
    if args.collect:
        for domain, algo in args.pairs:
            if algo not in COLLECT_ALGOS:
                raise ConfigError(
                    f"{domain}_{algo}: --collect collects {', '.join(COLLECT_ALGOS)}, not {algo!r} "
                    f"(ExORL's {algo} dataset is downloaded without --collect)"
                )
        resolve_device(args.device)
    elif urllib.parse.urlsplit(args.base_url).scheme not in ("http", "https"):
        raise ConfigError(
            f"--base_url {args.base_url!r} is not an http:// or https:// address; accepted: an http(s) URL (default {EXORL_BASE_URL})"
        )
    reason = unwritable(args.data_dir)
    if reason is not None:
        raise ConfigError(f"--data_dir {args.data_dir}: {reason}; choose another --data_dir")
    for domain, algo in args.pairs:
        folder = buffer_dir(args.data_dir, domain, algo, args.multiplier)
        blocker = file_in_the_way(folder)
        if blocker is not None:
            raise ConfigError(
                f"{domain}_{algo}: {blocker} is a file where the dataset folder {folder} goes; move it away"
            )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 when any pair failed, after trying every pair)."""
    errors.setup_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "OpenGL"):  # MuJoCo / OpenGL backend chatter at import
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    with errors.reported(PROG, ConfigError):
        check_args(args)
    torch.set_num_threads(args.torch_threads)
    failed = []
    for domain, algo in args.pairs:
        try:
            with errors.reported(PROG, DatasetError, DownloadError, ConfigError, ValueError):
                path = process(domain, algo, args)
            logger.info("%s_%s ready: %s", domain, algo, path)
        except SystemExit:  # the error line is written; go on with the other pairs
            failed.append(f"{domain}_{algo}")
        except MemoryError:
            errors.fail(
                PROG,
                f"out of memory during {domain}_{algo}; use fewer --episodes or --workers, or a machine with more memory",
            )
        except KeyboardInterrupt:
            errors.fail(
                PROG,
                f"interrupted during {domain}_{algo}; finished files are kept (collected or downloaded episodes, "
                "datasets already written) and rerunning the same command continues",
                errors.EXIT_INTERRUPTED,
            )
    if failed and len(args.pairs) > 1:
        errors.fail(PROG, f"{len(failed)} of {len(args.pairs)} pairs failed: {', '.join(failed)}")
    return errors.EXIT_BAD_INPUT if failed else 0


if __name__ == "__main__":
    sys.exit(main())
