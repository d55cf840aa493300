"""The one error path of the three programs (train, reformat, report).

Every expected failure (a bad flag or override, a missing, damaged or foreign file, an unavailable
device, an unwritable directory, too little memory) ends the program with exit code 2 and one
line on stderr, ``<prog>: error: <what was wrong and what to do>``. Unexpected errors (bugs) keep
their traceback; ``BFM_TRACEBACK=1`` shows it for the expected ones too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from bfm.files import disk_full, full_disk_name

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
TRACEBACK_ENV = "BFM_TRACEBACK"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) that points to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (its error names the bound and the text)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out: MemoryError (numpy, Python), torch's
    OutOfMemoryError (CUDA) or the CPU allocator's RuntimeError ("can't allocate memory")."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def setup_logging(fmt: str) -> None:
    """INFO-level log lines in ``fmt`` on stderr.

    Importing dm_control calls ``logging.basicConfig()``, which leaves the root logger at WARNING
    with a default handler, so a plain ``basicConfig`` afterwards does nothing and every INFO line
    (the reformatter's "ready" line and coverage table) is dropped. That default handler is
    replaced; handlers someone else installed (pytest's) are kept.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (
            type(handler) is logging.StreamHandler
            and getattr(handler.formatter, "_fmt", None) == logging.BASIC_FORMAT
        ):
            root.removeHandler(handler)
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format=fmt)


def fail(prog: str, message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Writes ``<prog>: error: <message>`` (one line) to stderr and exits with ``code``."""
    sys.stderr.write(f"{prog}: error: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def one_line(message: object) -> str:
    """A message on one line: its lines joined, indentation dropped."""
    return " ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())


def composition_error(error: BaseException) -> str:
    """A hydra composition error on one line: its first line with the options it lists, or its cause."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if "Available options" in str(error):
        cut = lines.index("Config search path:") if "Config search path:" in lines else len(lines)
        options = [o for o in lines[2:cut] if not o.startswith("base_")]
        return f"{first}; accepted: {', '.join(options)}"
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause).strip():
        first = f"{first.rstrip('.')}: {str(cause).strip().splitlines()[0]}"
    return first.rstrip(".")


@contextlib.contextmanager
def reported(prog: str, *expected: type[BaseException]) -> Iterator[None]:
    """Turns the ``expected`` exceptions and a full disk (``disk_full_message``) raised inside
    into :func:`fail` (unless ``BFM_TRACEBACK`` is set); anything else propagates with its
    traceback."""
    try:
        yield
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        if disk_full(error):  # before ``expected``, which may hold OSError
            fail(prog, disk_full_message(error))
        if isinstance(error, expected):
            fail(prog, str(error) or type(error).__name__)
        raise


def disk_full_message(error: OSError) -> str:
    """One line for a write that failed on a full disk or an exhausted quota."""
    what = full_disk_name(error)
    where = f" while writing {error.filename}" if error.filename else ""
    return (
        f"{what}{where}; what was written before is intact and the partial file was removed: free some space "
        "(or write elsewhere) and rerun the same command, which continues"
    )
