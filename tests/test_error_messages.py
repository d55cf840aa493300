"""Every error line the programs can print, enumerated from the source: each names the thing and
says what is accepted or what to do.

The expected failures of main_exorl.py, exorl_reformatter.py, evaluate.py and plot_results.py are
the exceptions that ``bfm.cli.errors.reported`` turns into one line (ConfigError, DatasetError,
...) and the calls of ``errors.fail``. This test finds every place that raises one with a message
and checks the message's fixed text against a list of words that say what is accepted or what to
do. A message that only passes on text built elsewhere (``raise ConfigError(str(error))``) is
checked where that text is built. The rows of tests/test_cli_input.py, tests/test_cli_errors.py and
tests/test_prompting.py run the programs on bad input and check the lines as printed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "ArgumentTypeError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "DatasetNotFoundError",
    "DownloadError",
    "PromptError",
    "RenderError",
    "SettingError",
}
# Words of a message that say what is accepted or what to do.
REMEDY = (
    "accepted", "expected", "must", "one of", "choose", "use ", "pass ", "delete", "rerun", "create",
    "set ", "add ", "remove", "rename", "move", "check", "reduce", "free ", "collect", "install",
    "valid", "try ", "leave", "fix ", "only", "needs", "e.g.", "functions in it", "evaluate", "give ",
)  # fmt: skip
# Helpers whose text is a remedy (called inside a message).
ADVICE = {"remake_advice", "_episode_advice", "disk_full_message", "create_command"}
# Messages that are not themselves an error to act on.
ALLOWED = {
    # the last line of several failed pairs, each named on its own line above it
    ("bfm/cli/reformat.py", "{} of {} pairs failed: {}"),
    # passes on the IndexError of SequenceBuffer.window_at, which names the episodes there are
    ("bfm/training/prompting.py", "goal {}: {}"),
    # puts the key's path before a SettingError's "<field> must be ..."
    ("bfm/training/config.py", "agent.{}"),
    # the values are the remedy: "rerun the same command to resume" or "nothing was saved"
    ("bfm/data/download.py", "{}: connection lost after {} attempts ({}); {}"),
    # the last value is the remedy: resume the seeds one at a time, or delete their checkpoints
    (
        "bfm/training/run_dir.py",
        "the seeds of a seeds={} run train in step, but their run directories differ ({}); {}",
    ),
}


def _static_text(node: ast.AST) -> tuple[str, set[str]]:
    """The fixed text of a message expression ("{}" for each value) and the functions it calls."""
    calls = {
        getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(node) if isinstance(n, ast.Call)
    }
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, calls
    if isinstance(node, ast.JoinedStr):
        return "".join(
            _static_text(v)[0] if isinstance(v, ast.Constant) else "{}" for v in node.values
        ), calls
    if isinstance(node, ast.BinOp):
        return _static_text(node.left)[0] + _static_text(node.right)[0], calls
    if isinstance(node, ast.IfExp):
        return _static_text(node.body)[0] + " | " + _static_text(node.orelse)[0], calls
    return "{}", calls


def error_sites() -> list[tuple[str, int, str, set[str]]]:
    """(file, line, fixed text, functions called) of every expected error with a message."""
    files = [*sorted((ROOT / "bfm").rglob("*.py")), *sorted(ROOT.glob("*.py"))]
    sites = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            message = None
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
                # SettingError(field, message); the others take the message first
                message = node.exc.args[-1 if name == "SettingError" else 0] if name in EXPECTED else None
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "fail"
                and len(node.args) >= 2
            ):
                message = node.args[1]
            if message is not None:
                text, calls = _static_text(message)
                sites.append((str(path.relative_to(ROOT)), node.lineno, text, calls))
    return sites


def test_the_enumeration_finds_the_error_sites() -> None:
    sites = error_sites()
    texts = [text for _, _, text, _ in sites]
    assert len(sites) > 100
    assert any(t == "run directory {}: {}; choose another --run_dir (or run_root)" for t in texts)  # a raise
    assert any(f == "bfm/cli/report.py" and "pass run directories" in t for f, _, t, _ in sites)  # a fail
    assert any(t.startswith("settings names unknown memory model(s)") for t in texts)  # SettingError


def test_every_error_line_says_what_is_accepted_or_what_to_do() -> None:
    lacking = []
    for file, line, text, calls in error_sites():
        if not any(c.isalpha() for c in text.replace("{}", "")):
            continue  # passes on a message built (and checked) where it is raised first
        if (file, text) in ALLOWED or calls & ADVICE or any(word in text.lower() for word in REMEDY):
            continue
        lacking.append(f"{file}:{line}: {text}")
    assert not lacking, "error lines without what is accepted or what to do:\n" + "\n".join(lacking)
