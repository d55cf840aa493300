"""The reformatter and the report: every bad input exits 2 with one line that names it, and
leaves nothing behind (the training CLI's table is in tests/test_cli_input.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bfm.cli import reformat as exorl_reformatter
from bfm.cli import report as plot_results


def one_error_line(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs ``main(argv)``, which must end with exit 2 (returned or raised) and one stderr line."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["walker"], "argument DOMAIN_ALGO: 'walker' is not DOMAIN_ALGO with DOMAIN in"),
        (["hopper_rnd"], "'hopper_rnd' is not DOMAIN_ALGO"),
        (["walker_rnd", "--multiplier", "0"], "argument --multiplier: expected a number > 0, got '0'"),
        (["walker_rnd", "--multiplier", "nan"], "argument --multiplier: expected a number > 0, got 'nan'"),
        (["walker_rnd", "--multiplier", "-1.5"], "argument --multiplier: expected a number > 0, got '-1.5'"),
        (["walker_rnd", "--seed", "-1"], "argument --seed: expected a whole number >= 0, got '-1'"),
        (["walker_rnd", "--explorer", "gpu"], "argument --explorer: invalid choice: 'gpu'"),
        (["walker_rnd", "--episode_selection", "last"], "argument --episode_selection: invalid choice"),
        (["walker_proto", "--collect"], "walker_proto: --collect collects random, rnd, not 'proto'"),
        (["walker_rnd", "--collect", "--device", "tpu"], "unknown device 'tpu'"),
        (["walker_rnd", "--bogus"], "unrecognized arguments: --bogus (see exorl_reformatter.py --help)"),
    ],
)
def test_reformatter_bad_input(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    line = one_error_line(exorl_reformatter.main, [*args, "--data_dir", str(tmp_path / "data")], capsys)
    assert line.startswith("exorl_reformatter.py: error: ") and expected in line, line
    assert not (tmp_path / "data").exists()  # nothing was created


def _raw_episode(folder: Path, name: str, content: bytes | dict | None) -> None:
    """Writes ``name`` into ``folder``: bytes as they are, a dict as an .npz, None as a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if content is None:
        (folder / name).mkdir()
    elif isinstance(content, bytes):
        (folder / name).write_bytes(content)
    else:
        np.savez(folder / name, **content)


WALKER_ROWS = {
    "observation": np.zeros((21, 24), np.float32),
    "action": np.zeros((21, 6), np.float32),
    "physics": np.zeros((21, 5)),
}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "x_0_20.npz",
            b"junk",
            "x_0_20.npz: not an .npz episode file (corrupt, or pickled Python objects); delete",
        ),
        ("x_0_20.npz", None, "x_0_20.npz: truncated or corrupt episode file"),
        ("x_0_20.npz", {"observation": np.zeros((21, 24))}, "missing arrays ['action', 'physics']"),
        (
            "x_0_20.npz",
            WALKER_ROWS,
            "physics has shape (21, 5), expected [T+1, 18] (an episode of another domain?)",
        ),
        ("episode.npz", b"x", "1 .npz file(s) (episode.npz) not named like raw episodes"),
    ],
)
def test_reformatter_bad_raw_episode(name: str, content, expected: str, tmp_path: Path, capsys) -> None:
    """A raw episode file that is damaged, foreign or misnamed is named, with a remedy that works
    (never an attempt to download over it)."""
    folder = tmp_path / "walker" / "rnd" / "buffer"
    _raw_episode(folder, name, content)
    line = one_error_line(
        exorl_reformatter.main, ["walker_rnd", "--data_dir", str(tmp_path), "--workers", "1"], capsys
    )
    assert expected in line, line
    assert "delete it and rerun to make the dataset from the other episodes" in line or "rename them" in line
    kept = sorted(p.name for p in folder.iterdir() if p.name != ".lock")  # the lock file stays, empty
    assert kept == [name]  # nothing written, nothing removed


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--base_url", "ftp//host"], "--base_url 'ftp//host' is not an http:// or https:// address"),
        (["--base_url", "/srv/exorl"], "--base_url '/srv/exorl' is not an http:// or https:// address"),
    ],
)
def test_reformatter_bad_base_url(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    line = one_error_line(exorl_reformatter.main, ["walker_rnd", "--data_dir", str(tmp_path), *args], capsys)
    assert expected in line, line


def test_reformatter_files_in_the_way(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("mine")
    line = one_error_line(
        exorl_reformatter.main, ["walker_rnd", "--data_dir", str(tmp_path / "afile")], capsys
    )
    assert (
        f"--data_dir {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder; choose another"
        in line
    )
    (tmp_path / "walker" / "rnd").mkdir(parents=True)
    (tmp_path / "walker" / "rnd" / "buffer").write_text("mine")
    line = one_error_line(exorl_reformatter.main, ["walker_rnd", "--data_dir", str(tmp_path)], capsys)
    assert f"walker_rnd: {tmp_path / 'walker' / 'rnd' / 'buffer'} is a file where the dataset folder" in line
    assert (tmp_path / "walker" / "rnd" / "buffer").read_text() == "mine"


def test_reformatter_corrupt_dataset_without_raw_episodes_says_what_to_do(tmp_path: Path, capsys) -> None:
    out = tmp_path / "walker" / "rnd" / "buffer" / "dataset.npz"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"not a zip")
    line = one_error_line(exorl_reformatter.main, ["walker_rnd", "--data_dir", str(tmp_path)], capsys)
    assert f"delete {out} and rerun this command" in line
    assert out.read_bytes() == b"not a zip"  # not deleted for the user


def write_run(root: Path, name: str, results: object) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    return run


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--reps", "0"], "argument --reps: expected a whole number >= 1, got '0'"),
        (["--reps", "many"], "argument --reps: expected a whole number >= 1, got 'many'"),
        (["--which", "last"], "argument --which: invalid choice: 'last'"),
    ],
)
def test_report_bad_flags(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    line = one_error_line(plot_results.main, [str(tmp_path), *args], capsys)
    assert line.startswith("plot_results.py: error: ") and expected in line


def test_report_out_naming_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "report.txt").write_text("mine")
    line = one_error_line(plot_results.main, [str(tmp_path), "--out", str(tmp_path / "report.txt")], capsys)
    assert f"--out {tmp_path / 'report.txt'} is a file" in line
    assert (tmp_path / "report.txt").read_text() == "mine"


def test_report_paths_that_are_not_runs(tmp_path: Path, capsys) -> None:
    line = one_error_line(plot_results.main, [str(tmp_path / "nope")], capsys)
    assert f"{tmp_path / 'nope'} does not exist; pass run directories" in line
    (tmp_path / "notes.txt").write_text("x")
    line = one_error_line(plot_results.main, [str(tmp_path / "notes.txt")], capsys)
    assert (
        f"{tmp_path / 'notes.txt'} is a file; pass run directories" in line and "results.json files" in line
    )


def test_report_only_unreadable_runs(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, "a", '{"truncated": ')
    line = one_error_line(plot_results.main, [str(tmp_path), "--out", str(tmp_path / "r")], capsys)
    assert "no readable results.json" in line and "1 unreadable" in line and "a/results.json" in line


def test_training_on_a_dataset_with_nan_observations_names_the_array(tmp_path: Path) -> None:
    import numpy as np

    from bfm.collection import make_synthetic_dataset
    from tests.test_cli import run_cli

    path = make_synthetic_dataset(tmp_path / "data", "walker", "rnd", episodes=2, episode_length=20, seed=0)
    arrays = dict(np.load(path, allow_pickle=False))
    arrays["observation"][1, 5, 3] = np.nan
    np.savez(path, **arrays)
    args = [
        "fb",
        "walker",
        "rnd",
        f"--data_dir={tmp_path / 'data'}",
        f"--run_dir={tmp_path / 'run'}",
        "experiment=smoke",
    ]
    # The changed array no longer matches its manifest's checksum: the load stops naming it.
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"main_exorl.py: error: {path}: array 'observation' does not match the sha256")
    assert f"delete {path} and remake it with: python exorl_reformatter.py walker_rnd --data_dir " in last
    # Without the checksums, the finiteness check still names the value.
    proc = run_cli(*args, "env.verify_checksums=false", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("main_exorl.py: error: ") and "observation holds a non-finite value" in last
    assert "episode position 1, row 5" in last
