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
    for pattern in ("bfm/configs/**/*.yaml", "docs/**/*.md", "experiments/*.sh", "scripts/*"):
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

    from bfm import agents, envs, memory
    from bfm.cli import train as main_exorl
    from bfm.training import config

    assert agents.MEMORY_TYPES == tuple(memory.REGISTRY)
    assert config.ALGORITHMS == tuple(agents.AGENTS)
    assert main_exorl.DOMAIN_NAMES == tuple(envs.DOMAINS)
    yamls = {
        p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "bfm" / "configs" / "memory").glob("*.yaml")
    }
    assert set(yamls) == set(memory.REGISTRY)
    agent_yamls = {p.stem for p in (ROOT / "bfm" / "configs" / "agent").glob("*.yaml")}
    assert agent_yamls >= set(agents.AGENTS), agent_yamls
    for name, cls in memory.REGISTRY.items():
        default = inspect.signature(cls).parameters["model_dimension"].default
        assert yamls[name]["name"] == name
        assert yamls[name].get("model_dimension", default) == default
    help_text = main_exorl.build_parser().format_help()
    for name in (*agents.MEMORY_TYPES, *config.ALGORITHMS, *envs.DOMAINS):
        assert name in help_text


# Which of bfm's subpackages each one may import (no arrow runs back).
LAYERS = {
    "envs": set(),
    "memory": set(),
    "data": {"envs"},
    "agents": {"data", "memory"},
    "collection": {"data", "envs"},
    "training": {"agents", "data", "envs", "memory"},
    "cli": {"agents", "collection", "data", "envs", "memory", "training"},
}
SUBPACKAGE = re.compile(r"^\s*(?:from bfm\.(\w+)|from bfm import (\w+)|import bfm\.(\w+))", re.MULTILINE)


# Top-level modules every layer may import (they import no bfm package).
SHARED_MODULES = {"files"}


def test_packages_import_only_the_layers_below() -> None:
    wrong = []
    for package, allowed in LAYERS.items():
        for path in sorted((ROOT / "bfm" / package).rglob("*.py")):
            used = {name for match in SUBPACKAGE.findall(path.read_text()) for name in match if name}
            wrong += [
                f"{path.relative_to(ROOT)} imports {name}"
                for name in sorted(used - allowed - {package} - SHARED_MODULES)
            ]
    for name in SHARED_MODULES:
        used = {
            n for match in SUBPACKAGE.findall((ROOT / "bfm" / f"{name}.py").read_text()) for n in match if n
        }
        wrong += [f"bfm/{name}.py imports {n}" for n in sorted(used)]
    assert not wrong, wrong
    assert set(LAYERS) == {p.name for p in (ROOT / "bfm").iterdir() if (p / "__init__.py").exists()}


def test_code_imports_bfm_not_bare_subpackage_names() -> None:
    """A bare ``import agents`` would pick up a user's own module of that name."""
    bare = re.compile(r"^\s*(?:from|import) (" + "|".join(LAYERS) + r")\b", re.MULTILINE)
    wrong = [str(p.relative_to(ROOT)) for p in source_files() if bare.search(p.read_text())]
    assert not wrong, wrong


def test_console_scripts_name_the_root_scripts_programs() -> None:
    """pyproject's console scripts call the functions the root scripts call."""
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    roots = {"bfm_evaluate": "evaluate"}  # a bare `evaluate` command would be too generic on a PATH
    assert set(scripts) == {"main_exorl", "exorl_reformatter", "plot_results", "bfm_evaluate"}
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert f"from {module} import {function}" in (ROOT / f"{roots.get(name, name)}.py").read_text()
