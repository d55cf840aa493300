"""exorl_reformatter.py: reformat round-trip with relabelled rewards, download against a loopback
server (full, resumed, unsafe archive, unreachable host), local collection and resume."""

import http.server
import io
import json
import os
import threading
import zipfile
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from bfm.cli import reformat as exorl_reformatter
from bfm.collection import RND_PRESETS, RNDConfig, rnd_config
from bfm.collection.collect import collect
from bfm.data import (
    DatasetError,
    SequenceBuffer,
    dataset_path,
    list_episode_files,
    read_episode,
    read_manifest,
)
from bfm.data.download import DownloadError, download, extract_archive
from bfm.data.exorl import buffer_dir, select_episodes, verify_dataset, write_episode
from bfm.data.reformat import reformat
from bfm.envs import DOMAINS

DOMAIN = "walker"
INFO = DOMAINS[DOMAIN]
LENGTH = 30


@pytest.fixture(scope="module")
def raw_episodes(tmp_path_factory):
    """Three real walker episodes (uniform random actions), as written by the collector."""
    folder = tmp_path_factory.mktemp("raw") / "buffer"
    collect(folder, DOMAIN, "random", 3 * LENGTH, seed=0, episode_length=LENGTH)
    return [read_episode(p) for p in list_episode_files(folder)]


def write_raw(folder, episodes, indices):
    for index, episode in zip(indices, episodes, strict=True):
        write_episode(folder, index, episode)
        # ExORL names are not zero-padded: rename to prove numeric (not lexicographic) ordering.
        padded = folder / f"episode_{index:06d}_{LENGTH}.npz"
        padded.rename(folder / f"20220101T000000_{index}_{LENGTH}.npz")


def test_reformat_round_trip(tmp_path, raw_episodes):
    folder = buffer_dir(tmp_path, DOMAIN, "rnd")
    write_raw(folder, raw_episodes, [10, 2, 9])  # sorted by index: 2, 9, 10
    out = reformat(folder, DOMAIN, "rnd", episodes=2, workers=1)
    assert out == dataset_path(tmp_path, DOMAIN, "rnd")
    manifest = read_manifest(out)
    assert manifest["episode_indices"] == [2, 9] and manifest["episodes"] == 2
    assert manifest["tasks"] == list(INFO.reward_tasks) and manifest["source"]["kind"] == "raw-folder"
    verify_dataset(out)
    with np.load(out, allow_pickle=False) as data:
        assert (
            data["observation"].shape == (2, LENGTH + 1, INFO.obs_dim)
            and data["observation"].dtype == np.float32
        )
        assert data["physics"].dtype == np.float64
        for i, source in enumerate((raw_episodes[1], raw_episodes[2])):
            np.testing.assert_array_equal(data["observation"][i], source["observation"])
            np.testing.assert_array_equal(data["action"][i], source["action"])
            # walker's collection task is stand: the relabelled reward equals the online reward.
            np.testing.assert_allclose(data["reward_stand"][i, 1:], source["reward"][1:, 0], atol=1e-5)
        assert all(data[f"reward_{t}"].shape == (2, LENGTH + 1) for t in INFO.reward_tasks)
    stamp = out.stat().st_mtime_ns
    reformat(folder, DOMAIN, "rnd", episodes=2, workers=1)  # nothing new: nothing happens
    assert out.stat().st_mtime_ns == stamp
    # Deleting the raw files of a partial dataset would lose episode 10: refused, nothing touched.
    with pytest.raises(DatasetError, match=r"would delete 1 raw episodes"):
        reformat(folder, DOMAIN, "rnd", episodes=2, workers=1, delete_raw=True)
    assert len(list_episode_files(folder)) == 3 and out.stat().st_mtime_ns == stamp
    reformat(folder, DOMAIN, "rnd", workers=1, delete_raw=True)
    assert read_manifest(out)["episode_indices"] == [2, 9, 10] and not list_episode_files(folder)
    buffer = SequenceBuffer(out, DOMAIN, None, 4, 2, seed=0)
    assert buffer.num_episodes == 3 and buffer.episode_length == LENGTH


@pytest.mark.parametrize("selection, kept", [("spread", [2, 10]), ("first", [2, 9])])
def test_reformat_episode_selection_and_coverage(tmp_path, raw_episodes, selection, kept):
    folder = buffer_dir(tmp_path, DOMAIN, "rnd")
    write_raw(folder, [*raw_episodes, raw_episodes[0]], [2, 9, 10, 11])
    out = reformat(folder, DOMAIN, "rnd", episodes=2, selection=selection, workers=1)
    manifest = read_manifest(out)
    assert manifest["episode_indices"] == kept and manifest["settings"]["episode_selection"] == selection
    stats = manifest["coverage"]
    with np.load(out, allow_pickle=False) as data:
        stand, height = data["reward_stand"][:, 1:], data["observation"][:, 1:, 14]
        assert stats["states"] == 2 * LENGTH
        assert stats["reward_above"]["stand"]["0.5"] == pytest.approx(np.mean(stand > 0.5))
        assert stats["reward_above"]["flip"]["0.8"] == pytest.approx(
            np.mean(data["reward_flip"][:, 1:] > 0.8)
        )
        assert stats["mean_reward"]["walk"] == pytest.approx(np.mean(data["reward_walk"][:, 1:]), rel=1e-5)
        assert stats["torso_height_quantiles"]["0.5"] == pytest.approx(np.median(height), rel=1e-5)
    # The first states of an episode (standing, before the walker falls) score well on stand.
    assert 0 < stats["reward_above"]["stand"]["0.8"] < 1
    assert set(stats["reward_above"]) == set(INFO.reward_tasks)


def test_select_episodes():
    assert select_episodes(10, 4) == [0, 2, 5, 7] and select_episodes(10, 4, "first") == [0, 1, 2, 3]
    assert select_episodes(3, None) == select_episodes(3, 5) == [0, 1, 2]
    assert select_episodes(10_000, 5000) == list(range(0, 10_000, 2))
    with pytest.raises(ValueError, match="accepted: spread, first"):
        select_episodes(3, 2, "random")


def test_reformat_relabels_every_task_with_a_reward(tmp_path):
    """Quadruped walk and run are not paper evaluation tasks but have rewards: they are relabelled too."""
    from bfm.collection import make_synthetic_dataset
    from bfm.envs import relabel

    out = make_synthetic_dataset(tmp_path, "quadruped", "rnd", episodes=1, episode_length=10, seed=0)
    info = DOMAINS["quadruped"]
    assert set(info.reward_tasks) - set(info.tasks) == {"walk", "run"}
    assert read_manifest(out)["tasks"] == list(info.reward_tasks)
    with np.load(out, allow_pickle=False) as data:
        expected = relabel("quadruped", data["physics"][0], tasks=["walk", "run"])
        for task in ("walk", "run"):
            np.testing.assert_array_equal(data[f"reward_{task}"][0], expected[task])


def test_reformat_bad_episodes(tmp_path, raw_episodes):
    folder = buffer_dir(tmp_path, DOMAIN, "rnd")
    write_raw(folder, raw_episodes[:2], [0, 1])
    bad = folder / f"episode_2_{LENGTH}.npz"
    bad.write_bytes((folder / f"20220101T000000_0_{LENGTH}.npz").read_bytes()[:500])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        reformat(folder, DOMAIN, "rnd", workers=1)
    assert not dataset_path(tmp_path, DOMAIN, "rnd").exists()
    assert not list(folder.glob(".dataset*"))  # no half-written file left behind
    np.savez(bad, observation=np.zeros((LENGTH + 1, 17), np.float32), action=np.zeros((LENGTH + 1, 6)),
             physics=np.zeros((LENGTH + 1, 18)))  # fmt: skip
    with pytest.raises(DatasetError, match=r"observation has shape \(31, 17\)"):
        reformat(folder, DOMAIN, "rnd", workers=1)


# ------------------------------------------------------------------------------------------------
# loopback HTTP server


@dataclass
class Served:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # bytes sent on the first GET before the connection is dropped
    requests: list[str | None] = field(default_factory=list)


def make_server(served: Served):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served.requests.append(self.headers.get("Range"))
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if served.cut_after is not None:
                cut, served.cut_after = served.cut_after, None
                self.wfile.write(body[start : start + cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def server():
    served = Served()
    srv = make_server(served)
    yield served, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def exorl_zip(episodes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for index, episode in enumerate(episodes):
            raw = io.BytesIO()
            np.savez_compressed(raw, **episode)
            zf.writestr(f"buffer/episode_{index}_{LENGTH}.npz", raw.getvalue())
        zf.writestr("video/0.mp4", b"not a video")
    return buffer.getvalue()


def test_cli_downloads_extracts_and_reformats(tmp_path, server, raw_episodes):
    served, url = server
    served.files["/walker/rnd.zip"] = exorl_zip(raw_episodes)
    served.cut_after = 3000  # the first connection is cut: the download resumes with a Range request
    args = ["walker_rnd", "--data_dir", str(tmp_path), "--base_url", url, "--workers", "1"]
    assert exorl_reformatter.main(args) == 0
    out = dataset_path(tmp_path, DOMAIN, "rnd")
    manifest = read_manifest(out)
    assert (
        manifest["source"]["kind"] == "exorl-download"
        and manifest["source"]["url"] == f"{url}/walker/rnd.zip"
    )
    assert manifest["episodes"] == 3 and served.requests == [None, "bytes=3000-"]
    assert not (tmp_path / DOMAIN / "rnd.zip").exists() and not (tmp_path / DOMAIN / "rnd" / "video").exists()
    assert len(list_episode_files(out.parent)) == 3  # raw files kept
    assert exorl_reformatter.main(args) == 0 and len(served.requests) == 2  # idempotent: no new request
    assert exorl_reformatter.main([*args, "--episodes", "2"]) == 0 and len(served.requests) == 2
    manifest = read_manifest(out)
    assert manifest["episodes"] == 2 and manifest["source"]["url"] == f"{url}/walker/rnd.zip"


def test_download_interrupted_then_resumed(tmp_path, server):
    served, url = server
    payload = np.random.default_rng(0).bytes(200_000)
    served.files["/x.zip"] = payload
    served.cut_after = 50_000
    dest = tmp_path / "x.zip"
    with pytest.raises(DownloadError, match="rerun the same command to resume"):
        download(f"{url}/x.zip", dest, retries=0)
    assert not dest.exists() and (tmp_path / "x.zip.part").stat().st_size == 50_000
    download(f"{url}/x.zip", dest)
    assert dest.read_bytes() == payload and served.requests == [None, "bytes=50000-"]
    assert not (tmp_path / "x.zip.part").exists()


def test_download_errors(tmp_path, server):
    _, url = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{url}/missing.zip", tmp_path / "missing.zip")
    port = make_server(Served())
    closed = port.server_address[1]
    port.shutdown()
    port.server_close()
    with pytest.raises(DownloadError, match="cannot reach"):
        download(f"http://127.0.0.1:{closed}/x.zip", tmp_path / "y.zip")
    assert not (tmp_path / "y.zip").exists()
    code = exorl_reformatter.main(
        ["walker_rnd", "--data_dir", str(tmp_path), "--base_url", f"http://127.0.0.1:{closed}"]
    )
    assert code == 2 and not dataset_path(tmp_path, DOMAIN, "rnd").exists()


def test_unsafe_archive_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("buffer/episode_0_10.npz", b"fine")
        zf.writestr("buffer/../../escaped.txt", b"evil")
    target = tmp_path / "walker" / "rnd"
    with pytest.raises(DatasetError, match="escapes"):
        extract_archive(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not (target / "buffer").exists()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("/etc/absolute.txt", b"evil")
    with pytest.raises(DatasetError, match="absolute"):
        extract_archive(archive, target)


# ------------------------------------------------------------------------------------------------
# local collection

TINY_RND = RNDConfig(hidden_dim=32, rnd_rep_dim=16, batch_size=16, num_seed_frames=25, replay_capacity=1000)


def test_collect_random_resumes_deterministically(tmp_path):
    a, b = tmp_path / "a" / "buffer", tmp_path / "b" / "buffer"
    collect(a, DOMAIN, "random", 3 * 20, seed=4, episode_length=20)
    collect(b, DOMAIN, "random", 2 * 20, seed=4, episode_length=20)  # "interrupted" after two episodes
    first = list_episode_files(b)[0].stat().st_mtime_ns
    collect(b, DOMAIN, "random", 3 * 20, seed=4, episode_length=20)
    assert list_episode_files(b)[0].stat().st_mtime_ns == first  # present episodes are not redone
    for x, y in zip(list_episode_files(a), list_episode_files(b), strict=True):
        ex, ey = read_episode(x), read_episode(y)
        assert all(np.array_equal(ex[k], ey[k]) for k in ex)
    with pytest.raises(DatasetError, match="other settings"):
        collect(b, DOMAIN, "random", 3 * 20, seed=5, episode_length=20)
    collect(b, DOMAIN, "random", 1 * 20, seed=4, episode_length=20)  # asks for less than is there
    record = json.loads((b / "collection.json").read_text())
    assert (record["episodes"], record["steps"]) == (3, 60) and len(list_episode_files(b)) == 3


@pytest.fixture
def one_thread():
    """Tiny networks: a second intra-op thread only adds contention on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_collect_rnd_writes_valid_files_and_resumes(tmp_path, one_thread):
    folder = tmp_path / "buffer"
    collect(folder, DOMAIN, "rnd", 2 * 20, seed=0, episode_length=20, rnd_config=TINY_RND)
    files = list_episode_files(folder)
    assert [f.name for f in files] == ["episode_000000_20.npz", "episode_000001_20.npz"]
    for f in files:
        episode = read_episode(f, (INFO.obs_dim, INFO.action_dim, INFO.physics_dim))
        assert episode["observation"].shape == (21, INFO.obs_dim) and np.all(episode["action"][0] == 0)
        assert np.all(np.abs(episode["action"]) <= 1) and np.all(episode["discount"] == 1)
    (folder / ".rnd_agent.pt").stat()
    collect(
        folder, DOMAIN, "rnd", 4 * 20, seed=0, episode_length=20, rnd_config=TINY_RND
    )  # resumes, updates run
    assert len(list_episode_files(folder)) == 4
    assert json.loads((folder / "collection.json").read_text())["rnd"]["hidden_dim"] == 32


def test_cli_explorer_options_are_recorded(tmp_path, capsys):
    args = ["walker_rnd", "--collect", "--collect_steps", "40", "--episode_length", "20", "--explorer", "cpu",
            "--rnd_batch_size", "64", "--rnd_update_every", "4", "--data_dir", str(tmp_path), "--workers", "1"]  # fmt: skip
    assert exorl_reformatter.main(args) == 0
    rnd = read_manifest(dataset_path(tmp_path, DOMAIN, "rnd"))["source"]["collection"]["rnd"]
    cpu = RND_PRESETS["cpu"]
    assert rnd["hidden_dim"] == cpu["hidden_dim"] and rnd["rnd_rep_dim"] == cpu["rnd_rep_dim"]
    assert (rnd["batch_size"], rnd["update_every_steps"]) == (64, 4)
    assert rnd["lr"] == RNDConfig().lr  # what the preset does not name stays URLB's
    # Resuming with another explorer would mix two explorers in one dataset: refused.
    more = [a if a != "40" else "60" for a in args]
    capsys.readouterr()
    assert exorl_reformatter.main([*more[:-4], "--rnd_batch_size", "32", *more[-4:]]) == 2
    assert "other settings {'rnd.batch_size': (64, 32)}" in capsys.readouterr().err.strip().splitlines()[-1]
    assert len(list_episode_files(buffer_dir(tmp_path, DOMAIN, "rnd"))) == 2


def test_rnd_config_presets():
    assert rnd_config() == RNDConfig() and rnd_config("urlb", batch_size=None) == RNDConfig()
    assert rnd_config("cpu", lr=3e-4).lr == 3e-4
    with pytest.raises(ValueError, match="accepted: urlb, cpu"):
        rnd_config("gpu")


def test_cli_collect_changed_dynamics(tmp_path):
    args = ["walker_random", "--collect", "--collect_steps", "40", "--episode_length", "20", "--multiplier", "1.5",
            "--seed", "3", "--data_dir", str(tmp_path), "--workers", "1"]  # fmt: skip
    assert exorl_reformatter.main(args) == 0
    out = dataset_path(tmp_path, DOMAIN, "random", 1.5)
    assert out.parts[-3] == "random_m1.5"
    manifest = read_manifest(out)
    collection = manifest["source"]["collection"]
    assert manifest["multiplier"] == 1.5 and manifest["source"]["kind"] == "collected"
    assert (collection["algorithm"], collection["steps"], collection["seed"], collection["multiplier"]) == (
        "random",
        40,
        3,
        1.5,
    )
    # A missing changed-dynamics dataset without --collect says how to collect it.
    assert exorl_reformatter.main(["walker_rnd", "--multiplier", "2", "--data_dir", str(tmp_path)]) == 2


def test_unknown_exorl_dataset_is_refused_before_any_download(tmp_path, server, capsys):
    served, url = server
    before = len(served.requests)
    code = exorl_reformatter.main(["walker_foo", "--data_dir", str(tmp_path), "--base_url", url])
    assert code == 2 and len(served.requests) == before
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("exorl_reformatter.py: error: ")
    assert "ExORL publishes no 'foo' dataset; ExORL datasets: aps, diayn" in line


@pytest.mark.parametrize("flag", ["--episodes", "--collect_steps", "--episode_length", "--workers"])
@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_counts_must_be_positive(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        exorl_reformatter.main(["walker_random", flag, value, "--data_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected a whole number >= 1, got '{value}'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_silent_server_fails_fast_naming_the_url(tmp_path):
    """A server that accepts the connection and never answers: two timeouts, then a clear error."""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/walker/rnd.zip"
        start = time.monotonic()
        with pytest.raises(
            DownloadError, match=r"the server sent nothing for 0.5 s, twice; nothing was saved"
        ):
            download(url, tmp_path / "rnd.zip", timeout=0.5, backoff=0.01)
        assert time.monotonic() - start < 5
    assert not (tmp_path / "rnd.zip.part").exists() and not (tmp_path / "rnd.zip").exists()


def test_a_killed_writers_temporary_file_is_removed(tmp_path):
    """SIGKILL during the final write leaves .dataset.npz.tmp-<pid>; the next write removes it."""
    import subprocess
    import sys

    from bfm.data.exorl import write_dataset

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    folder = tmp_path / "walker" / "rnd" / "buffer"
    folder.mkdir(parents=True)
    stale = folder / f".dataset.npz.tmp-{dead.stdout.strip()}"
    stale.write_bytes(b"")
    live = folder / f".dataset.npz.tmp-{os.getppid()}"  # a running process's: kept
    live.write_bytes(b"")
    write_dataset(folder / "dataset.npz", {"x": np.zeros(3, np.float32)}, {})
    assert not stale.exists() and live.exists() and (folder / "dataset.npz").is_file()


def test_success_says_what_it_did(tmp_path):
    """A successful run prints its coverage table and ready line (dm_control's import configures
    logging first; the programs replace its handler)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MUJOCO_GL="disable", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(root / "exorl_reformatter.py"), "walker_random", "--collect", "--collect_steps",
         "1000", "--data_dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "coverage of " in proc.stderr and "torso height (m)" in proc.stderr
    assert proc.stderr.rstrip().endswith(f"walker_random ready: {tmp_path}/walker/random/buffer/dataset.npz")


def test_a_dataset_folder_in_use_is_refused(tmp_path, capsys):
    from bfm.training.run_dir import locked

    folder = buffer_dir(tmp_path, "walker", "random")
    with locked(folder, "dataset folder"):
        code = exorl_reformatter.main(
            ["walker_random", "--collect", "--collect_steps", "1000", "--data_dir", str(tmp_path)]
        )
        err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"exorl_reformatter.py: error: dataset folder {folder} is in use by pid {os.getpid()}"
    )
    assert not list(folder.glob("episode_*"))  # nothing collected
    assert (
        exorl_reformatter.main(
            ["walker_random", "--collect", "--collect_steps", "1000", "--data_dir", str(tmp_path)]
        )
        == 0
    )


def test_ctrl_c_mid_relabel_exits_130_and_a_rerun_continues(tmp_path):
    """SIGINT while the reformatter relabels: one line, exit 130, no temporary file, the raw
    episodes kept; the same command then writes the dataset."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MUJOCO_GL="disable", OMP_NUM_THREADS="1")
    args = ["walker_random", "--collect", "--collect_steps", "6000", "--episode_length", "100",
            "--data_dir", str(tmp_path), "--workers", "1"]  # fmt: skip
    command = [sys.executable, str(root / "exorl_reformatter.py"), *args]
    assert subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == 0
    out = dataset_path(tmp_path, "walker", "random")
    out.unlink()  # the raw episodes stay: the next run only reads and relabels them
    # The relabelling announces itself and then lasts until the signal comes (a real one, at a
    # known point: on a loaded machine a relabelling of seconds can end before a poll notices it).
    # SIGINT as a terminal delivers it: a job started in the background (nohup, CI scripts)
    # inherits an ignored SIGINT, under which Python raises no KeyboardInterrupt.
    slow_relabel = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import sys, time; import bfm.data.reformat as r; real = r.relabel\n"
        "def relabel(*a, **k):\n"
        "    print('relabelling now', file=sys.stderr, flush=True)\n"
        "    for _ in range(6000): time.sleep(0.01)\n"
        "    return real(*a, **k)\n"
        "r.relabel = relabel\n"
        "from bfm.cli.reformat import main; sys.exit(main(sys.argv[1:]))"
    )
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", slow_relabel, *args], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        deadline = time.monotonic() + 120
        while "relabelling now" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    assert code == 130, log.read_text()[-2000:]
    last = log.read_text().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith(
        "exorl_reformatter.py: error: interrupted during walker_random; finished files are kept"
    )
    assert "Traceback" not in log.read_text()
    assert (
        not out.exists() and not list(out.parent.glob(".*tmp*")) and len(list_episode_files(out.parent)) == 60
    )
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and read_manifest(out)["episodes"] == 60, rerun.stderr[-2000:]


def test_a_full_disk_while_writing_the_dataset_exits_2_and_keeps_the_episodes(tmp_path, capsys, monkeypatch):
    import errno

    from bfm.data import exorl

    args = ["walker_random", "--collect", "--collect_steps", "2000", "--data_dir", str(tmp_path)]

    def full(file, *arrays, **named):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(file, "name", None))

    monkeypatch.setattr(exorl.np, "savez", full)
    code = exorl_reformatter.main(args)
    lines = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()
    assert code == 2 and lines[-1].startswith(
        "exorl_reformatter.py: error: no space left on the device while writing "
    )
    folder = buffer_dir(tmp_path, "walker", "random")
    assert not list(folder.glob(".*tmp*")) and not (folder / "dataset.npz").exists()
    assert len(list_episode_files(folder)) == 2  # the collected episodes stay
    monkeypatch.undo()
    assert exorl_reformatter.main(args) == 0 and read_manifest(folder / "dataset.npz")["episodes"] == 2


def _not_an_archive(served: Served) -> None:
    served.files["/walker/rnd.zip"] = b"<html>a login page</html>"


def _archive_without_episodes(served: Served) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("video/0.mp4", b"not a video")
    served.files["/walker/rnd.zip"] = buffer.getvalue()


@pytest.mark.parametrize(
    ("serve", "expected"),
    [
        (lambda served: None, "walker/rnd.zip: HTTP 404 Not Found; check --base_url (archives are "),
        (
            _not_an_archive,
            "rnd.zip: not a zip archive, or a truncated one (File is not a zip file); delete it",
        ),
        (
            _archive_without_episodes,
            "rnd.zip: no buffer/ entries among its 1 (e.g. video/0.mp4): not an ExORL",
        ),
    ],
)
def test_a_wrong_base_url_is_named_as_the_cause(serve, expected, tmp_path, server, capsys):
    served, url = server
    serve(served)
    capsys.readouterr()
    assert exorl_reformatter.main(["walker_rnd", "--data_dir", str(tmp_path), "--base_url", url]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("exorl_reformatter.py: error: ") and expected in line, line
    assert "--base_url" in line
    assert not dataset_path(tmp_path, DOMAIN, "rnd").exists()
