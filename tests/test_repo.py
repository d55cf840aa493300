"""Repository hygiene: the code's docs point only at what is in this repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "runs", "datasets", "outputs", "multirun", "wandb"}


def source_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not SKIP.intersection(p.relative_to(ROOT).parts)]


def test_docstrings_cite_only_files_in_the_repository() -> None:
    outside = re.compile(r"DESIGN\.md|official-code-reading|BASELINES\.md|shared/")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in source_files()
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, f"references to files outside the repository: {hits}"
    assert len(source_files()) > 40  # the scan sees the code
