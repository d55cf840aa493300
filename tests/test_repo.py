"""Repository hygiene: the code's docs point only at what is in this repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "runs", "datasets", "outputs", "multirun", "wandb"}


def source_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not SKIP.intersection(p.relative_to(ROOT).parts)]


def doc_files() -> list[Path]:
    """Code, configs, scripts and docs of the repository."""
    found = [*source_files(), ROOT / "README.md", ROOT / "Makefile"]
    for pattern in ("configs/**/*.yaml", "docs/**/*.md", "experiments/*.sh", "scripts/*"):
        found += [p for p in ROOT.glob(pattern) if p.is_file()]
    return found


def test_docs_cite_only_files_in_the_repository() -> None:
    outside = re.compile(r"DESIGN\.md|official-code-reading|BASELINES|shared/")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in doc_files()
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, f"references to files outside the repository: {hits}"
    assert len(source_files()) > 40  # the scan sees the code


def test_registries_configs_and_defaults_agree() -> None:
    """Memory types, algorithms and domains: one registry each, and every list agrees with it."""
    import inspect

    import yaml

    import agents
    import envs
    import main_exorl
    import memory
    from training import config

    assert agents.MEMORY_TYPES == tuple(memory.REGISTRY)
    assert config.ALGORITHMS == tuple(agents.AGENTS)
    assert main_exorl.DOMAIN_NAMES == tuple(envs.DOMAINS)
    yamls = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "configs" / "memory").glob("*.yaml")}
    assert set(yamls) == set(memory.REGISTRY)
    agent_yamls = {p.stem for p in (ROOT / "configs" / "agent").glob("*.yaml")}
    assert agent_yamls >= set(agents.AGENTS), agent_yamls
    for name, cls in memory.REGISTRY.items():
        default = inspect.signature(cls).parameters["model_dimension"].default
        assert yamls[name]["name"] == name
        assert (
            yamls[name].get("model_dimension", default)
            == default
            == agents.config.DEFAULT_MODEL_DIMENSION[name]
        )
    help_text = main_exorl.build_parser().format_help()
    for name in (*agents.MEMORY_TYPES, *config.ALGORITHMS, *envs.DOMAINS):
        assert name in help_text


# Which of the repository's packages each package may import (no arrow runs back).
LAYERS = {
    "envs": set(),
    "memory": set(),
    "data": {"envs"},
    "agents": {"data", "memory"},
    "collection": {"data", "envs"},
    "training": {"agents", "data", "envs", "memory"},
}


def test_packages_import_only_the_layers_below() -> None:
    pattern = re.compile(r"^\s*(?:from|import) (" + "|".join(LAYERS) + r")\b", re.MULTILINE)
    wrong = []
    for package, allowed in LAYERS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            used = set(pattern.findall(path.read_text())) - {package}
            wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(used - allowed)]
    assert not wrong, wrong
