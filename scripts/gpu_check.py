"""GPU validation in one call: tests, update speed, several seeds, a real run with a kill and a resume.

    python scripts/gpu_check.py --out DIR                     # on a CUDA machine (about 7 minutes)
    python scripts/gpu_check.py --device cpu --tiny --no_install --out DIR   # the CPU dry run (tests)

Installs the wheel bundle of ``scripts/gpu_bundle.py`` (``gpu_bundle/``, made by ``make gpu-bundle``)
into a temporary site folder unless ``--no_install``, then runs each part in its own process with
its own time limit, so that a failure or a timeout in one leaves the others' results:

- ``env``: machine, torch, CUDA device, the packages found;
- ``tests``: ``pytest -m gpu`` and a selection of default tests that need nothing the bundle leaves out;
- ``matmul``: the dense matmul rate in fp32, TF32 and bf16;
- ``speed``: seconds per update at the paper config for plain FB, FB-M with each memory model and
  HILP-M GRU, in eager fp32, TF32, bf16 autocast, compiled and compiled with CUDA graphs
  (``compile_mode=reduce-overhead``), with the kernels (CUDA) or operators (CPU) one update
  launches (torch profiler) and one step's time split;
- ``seeds``: the several-seeds update (K = 1, 5, 10) at the paper config and the CPU preset;
- ``run``: ``main_exorl.py fb_m walker rnd`` at the paper config on a small dataset the project makes
  (a few thousand updates, evaluations, checkpoints), killed after its first checkpoint and resumed.

Everything goes into ``--out`` (default ``$OUT`` when set, else ``gpu_check_out/``): one
``<part>.json`` and ``<part>.log`` per part, and ``report.json`` / ``report.md`` with all of it and
the estimated wall time of one paper run (1M updates and its 51 evaluations).

The parts import torch, the benchmarks and ``bfm`` inside their functions: the driver itself runs
before the bundle is installed, and each part runs in a child process that has it on its path.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "tests", "matmul", "speed", "seeds", "run")
# Seconds each part may take on the GPU machine (about 7 minutes in all, with the install).
LIMITS = {"env": 20, "tests": 80, "matmul": 20, "speed": 140, "seeds": 60, "run": 90}
# Default tests that need only what the bundle brings (no launchers, wandb, rliable, ffmpeg, GL).
SELECTED_TESTS = [
    "tests/test_memory.py",
    "tests/test_agents.py",
    "tests/test_envs_batched.py",
    "tests/test_data_buffer.py",
]
TINY_TESTS = ["tests/test_memory.py", "-k", "window_equals_steps"]
PAPER_UPDATES, PAPER_EVALUATIONS = 1_000_000, 51  # evaluation at step 0 and every 20k updates


# ------------------------------------------------------------------------------------------------
# the parts (each runs in its own process: python scripts/gpu_check.py --part NAME ...)


def part_env(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    found = {}
    for name in ("dm_control", "mujoco", "hydra", "omegaconf", "numexpr", "imageio", "safetensors", "bfm"):
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "found")
        except ImportError as error:
            found[name] = f"missing ({error})"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
        "packages": found,
    }


def part_tests(args: argparse.Namespace) -> dict[str, Any]:
    runs = {
        "gpu": (["tests/test_perf.py"] if args.tiny else [], "gpu"),
        "selected": (TINY_TESTS if args.tiny else SELECTED_TESTS, "not slow and not gpu"),
    }
    out = {}
    for name, (selection, marker) in runs.items():
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection, "-m", marker],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
        out[name] = {
            "exit_code": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr.strip()[-300:],
            "seconds": round(time.perf_counter() - started, 1),
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20],
        }
    return out


def part_matmul(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.common import matmul_gflops

    size = 256 if args.tiny else 8192
    out = {"size": size}
    for name, dtype, tf32 in (
        ("fp32", torch.float32, False),
        ("tf32", torch.float32, True),
        ("bf16", torch.bfloat16, False),
    ):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        out[f"{name}_gflops"] = round(
            matmul_gflops(size, dtype, args.device, seconds=0.5 if args.tiny else 2.0), 1
        )
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


# mode -> agent config overrides
SPEED_MODES = {
    "eager": {},
    "tf32": {"tf32": True},
    "bf16": {"bf16": True},
    "compiled": {"compile": True},
    "compiled+cudagraphs": {"compile": True, "compile_mode": "reduce-overhead"},
}


def _presets(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.common import PRESETS, Preset

    if args.tiny:
        return {"tiny": Preset("tiny", 16, 4, 2, 16)}
    return {"paper": PRESETS["paper"], "cpu": PRESETS["cpu"]}


def _rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.tiny:
        return [("fb", "none"), ("fb_m", "gru")]
    return [("fb", "none"), *[("fb_m", m) for m in ("gru", "transformer", "s4d", "mlp")], ("hilp_m", "gru")]


def count_launches(agent: Any, batch: Any, device: str) -> int:
    """Kernels (CUDA) or operators (CPU) one update launches, from torch's profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    agent.update(batch)
    activities = [ProfilerActivity.CUDA] if device.startswith("cuda") else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        agent.update(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return sum(1 for e in prof.events() if str(e.device_type).lower().endswith(kind))


def part_speed(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.update_speed import build, synthetic_batch, time_split, time_updates

    (name, preset), *_ = _presets(args).items()
    batch = synthetic_batch(preset, args.device)
    steps = 2 if args.tiny else 10
    modes = ["eager", "bf16"] if args.tiny else list(SPEED_MODES)
    deadline = time.perf_counter() + args.limit - 15
    rows: list[dict[str, Any]] = []
    out = {"preset": name, "rows": rows}
    # Every row in the quick modes first, then the compiled ones (each compiles for tens of seconds),
    # FB-M GRU first: what the part's time limit cuts is the least needed.
    fast = [m for m in modes if not m.startswith("compiled")]
    plan = [(row, m) for m in fast for row in _rows(args)]
    plan += [(row, m) for row in _rows(args)[1:] + _rows(args)[:1] for m in modes if m.startswith("compiled")]
    try:
        agent = build("fb_m", "gru", preset, "eager", args.device)
        out["split_fb_m_gru_eager"] = time_split(agent, preset, steps, args.device)
    except Exception as error:
        out["split_error"] = f"{type(error).__name__}: {error}"[:300]
    for (algo, memory), mode in plan:
        # TF32 is a process-wide flag (agents.optim.configure_device): off again for every other mode.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        if time.perf_counter() > deadline:
            rows.append({"algo": algo, "memory": memory, "mode": mode, "skipped": "part time limit"})
            continue
        row = {"algo": algo, "memory": memory, "mode": mode}
        try:
            agent = build(
                algo,
                memory if memory != "none" else "gru",
                preset,
                "eager",
                args.device,
                **SPEED_MODES[mode],
            )
            timing = time_updates(agent, batch, steps, args.device)
            row.update(
                s_per_update=timing["best_s"],
                updates_per_s=1 / timing["best_s"],
                first_call_s=timing["warmup_s"],
            )
            if mode == "eager":
                row["launches_per_update"] = count_launches(agent, batch, args.device)
        except Exception as error:  # one failing mode must not hide the others
            row["error"] = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"
            )
        rows.append(row)
        _save_partial(args, "speed", out)
    return out


def part_seeds(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.common import PRESETS
    from benchmarks.seeds_speed import measure

    presets = _presets(args)
    PRESETS.update(presets)  # measure() looks presets up by name
    ks = (1, 2) if args.tiny else (1, 5, 10)
    deadline = time.perf_counter() + args.limit - 10
    rows = []
    for name in presets:
        for k in ks:
            if time.perf_counter() > deadline:
                rows.append({"preset": name, "seeds": k, "skipped": "part time limit"})
                continue
            try:
                rows.append(
                    measure(
                        "fb_m",
                        "gru",
                        name,
                        "eager",
                        k,
                        2 if args.tiny else 3,
                        args.device,
                        rounds=1 if args.tiny else 2,
                    )
                )
            except Exception as error:
                rows.append({"preset": name, "seeds": k, "error": f"{type(error).__name__}: {error}"[:300]})
            _save_partial(args, "seeds", {"rows": rows})
    return {"rows": rows}


def part_run(args: argparse.Namespace) -> dict[str, Any]:
    from bfm.collection import make_synthetic_dataset

    work = Path(args.out) / "run"
    data = work / "datasets"
    episodes, length = (4, 60) if args.tiny else (20, 1000)
    make_synthetic_dataset(data, "walker", "rnd", episodes=episodes, episode_length=length, seed=0)
    run_dir = work / "fb_m_walker"
    size = (
        ["experiment=smoke", "--learning_steps", "6", "--eval_frequency", "3"]
        if args.tiny
        else [
            "--learning_steps",
            "3000",
            "--eval_frequency",
            "1000",
            "--eval_rollouts",
            "2",
            "--z_inference_steps",
            "2000",
        ]
    )
    command = [
        sys.executable, str(ROOT / "main_exorl.py"), "fb_m", "walker", "rnd", "--memory_type", "gru",
        f"--data_dir={data}", f"--episodes={episodes}", f"--run_dir={run_dir}", f"--device={args.device}", *size,
    ]  # fmt: skip
    first = "step_000000003" if args.tiny else "step_000001000"
    out: dict[str, Any] = {"command": " ".join(command[1:])}
    started = time.perf_counter()
    with (work / "first.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None and not (run_dir / "checkpoints" / first).is_dir():
            time.sleep(0.2)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    out["killed_after_first_checkpoint"] = killed
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    out["exit_code"] = resumed.returncode
    out["seconds"] = round(time.perf_counter() - started, 1)
    log_text = resumed.stdout + resumed.stderr
    out["resumed_from"] = next(
        (
            line.split("resume from ")[-1].rstrip(")")
            for line in log_text.splitlines()
            if "resume from" in line
        ),
        None,
    )
    out["evaluation_seconds"] = [
        float(line.rsplit(" in ", 1)[1].rstrip("s"))
        for line in log_text.splitlines()
        if "eval step" in line and " in " in line
    ]
    results = run_dir / "results.json"
    if results.is_file():
        summary = json.loads(results.read_text())
        out["final_mean_iqm"] = summary["final"]["mean_iqm"]
        out["steps"] = summary["steps"]
    train_csv = run_dir / "train.csv"
    if train_csv.is_file():
        rates = [
            float(r["time/updates_per_second"])
            for r in csv.DictReader(train_csv.open())
            if r.get("time/updates_per_second")
        ]
        out["updates_per_second"] = sorted(rates)[len(rates) // 2] if rates else None
    if resumed.returncode != 0:
        out["error"] = log_text.strip()[-500:]
    return out


PART_FUNCTIONS = {
    "env": part_env,
    "tests": part_tests,
    "matmul": part_matmul,
    "speed": part_speed,
    "seeds": part_seeds,
    "run": part_run,
}


def _save_partial(args: argparse.Namespace, part: str, value: dict[str, Any]) -> None:
    """Writes what a part has so far, so that a timeout keeps it."""
    (Path(args.out) / f"{part}.json").write_text(
        json.dumps({"status": "partial", **value}, indent=2, default=str)
    )


# ------------------------------------------------------------------------------------------------
# the driver


def install_bundle(bundle: Path, site: Path) -> dict[str, Any]:
    """pip-installs every wheel of ``bundle`` into ``site`` (no index, no dependencies)."""
    wheels = sorted(str(w) for w in bundle.glob("*.whl"))
    if not wheels:
        return {"status": "failed", "error": f"no wheels in {bundle}: run `make gpu-bundle` first"}
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--target",
            str(site),
            *wheels,
        ],
        capture_output=True,
        text=True,
    )
    status = "ok" if proc.returncode == 0 else "failed"
    return {
        "status": status,
        "wheels": len(wheels),
        "seconds": round(time.perf_counter() - started, 1),
        "error": proc.stderr.strip()[-500:] if status != "ok" else None,
    }


def run_part(part: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Runs one part in a child process under its time limit; its JSON, or what went wrong."""
    limit = args.limits.get(part, LIMITS[part])
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--part",
        part,
        "--out",
        args.out,
        "--device",
        args.device,
        "--limit",
        str(limit),
    ]
    command += ["--tiny"] if args.tiny else []
    started = time.perf_counter()
    result_file = Path(args.out) / f"{part}.json"
    result_file.unlink(missing_ok=True)
    with (Path(args.out) / f"{part}.log").open("w") as log:
        # Its own process group, so that a timeout also stops what the part started (pytest, a training run).
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = "ok" if proc.wait(timeout=limit) == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timeout after {limit} s"
    seconds = round(time.perf_counter() - started, 1)
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    result.pop("status", None)
    return {"status": status, "seconds": seconds, **result}


def estimate_paper_run(report: dict[str, Any]) -> dict[str, Any] | None:
    """Wall time of 1M FB-M GRU updates at the best measured paper-config rate plus 51 evaluations
    (the run part's evaluation time scaled from its 2 episodes per task to the paper's 10)."""
    rows = [
        r
        for r in report.get("speed", {}).get("rows", [])
        if r.get("algo") == "fb_m" and r.get("memory") == "gru" and "s_per_update" in r
    ]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["s_per_update"])
    evals = report.get("run", {}).get("evaluation_seconds") or []
    eval_s = max(evals) * 5 if evals else None  # 10 episodes per task instead of 2, stepped together
    hours = (PAPER_UPDATES * best["s_per_update"] + PAPER_EVALUATIONS * (eval_s or 0)) / 3600
    return {
        "mode": best["mode"],
        "updates_per_s": round(1 / best["s_per_update"], 1),
        "evaluation_s": eval_s,
        "hours": round(hours, 2),
    }


def markdown(report: dict[str, Any]) -> str:
    env = report.get("env", {})
    lines = [
        f"# GPU check ({report['started']}, {env.get('device_name') or 'no CUDA device'}, device {report['device']}{', tiny sizes' if report['tiny'] else ''})",
        "",
        "| part | status | seconds |",
        "|---|---|---|",
        *[f"| {p} | {report[p]['status']} | {report[p]['seconds']} |" for p in PARTS if p in report],
        "",
    ]
    tests = report.get("tests", {})
    for name in ("gpu", "selected"):
        if name in tests:
            lines.append(f"Tests ({name}): {tests[name]['summary']}")
    if "matmul" in report:
        m = report["matmul"]
        lines.append(
            f"\nMatmul {m.get('size')}^3: fp32 {m.get('fp32_gflops')}, TF32 {m.get('tf32_gflops')}, bf16 {m.get('bf16_gflops')} GFLOP/s"
        )
    speed = report.get("speed", {})
    if speed.get("rows"):
        lines += [
            f"\nUpdate speed ({speed.get('preset')} config):\n",
            "| algo | memory | mode | s/update | updates/s | first call s | launches/update |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in speed["rows"]:
            if "s_per_update" in r:
                lines.append(
                    f"| {r['algo']} | {r['memory']} | {r['mode']} | {r['s_per_update']:.4f} | {r['updates_per_s']:.1f} | {r['first_call_s']:.1f} | {r.get('launches_per_update', '')} |"
                )
            else:
                lines.append(
                    f"| {r['algo']} | {r['memory']} | {r['mode']} | {r.get('error') or r.get('skipped')} | | | |"
                )
    if speed.get("split_fb_m_gru_eager"):
        split = speed["split_fb_m_gru_eager"]
        lines.append(
            "\nStep split, fb_m gru eager (ms): " + ", ".join(f"{k} {1000 * v:.2f}" for k, v in split.items())
        )
    seeds = report.get("seeds", {}).get("rows", [])
    if seeds:
        lines += [
            "\nSeveral seeds (fb_m gru, s per seed-update):\n",
            "| preset | K | sequential | batched | gain |",
            "|---|---|---|---|---|",
        ]
        for r in seeds:
            if "sequential_s_per_seed" in r:
                b = r.get("batched_s_per_seed")
                gain = f"{r['sequential_s_per_seed'] / b:.2f}x" if b else r.get("note", "")
                lines.append(
                    f"| {r['preset']} | {r['seeds']} | {r['sequential_s_per_seed']:.4f} | {b if b is None else f'{b:.4f}'} | {gain} |"
                )
            else:
                lines.append(f"| {r['preset']} | {r['seeds']} | {r.get('error') or r.get('skipped')} | | |")
    run = report.get("run", {})
    if run:
        lines.append(
            f"\nReal run: exit {run.get('exit_code')}, killed after its first checkpoint: {run.get('killed_after_first_checkpoint')}, "
            f"resumed from {run.get('resumed_from')}, {run.get('steps')} steps, {run.get('updates_per_second')} updates/s, "
            f"evaluations {run.get('evaluation_seconds')} s, final mean IQM {run.get('final_mean_iqm')}"
        )
    estimate = report.get("paper_run_estimate")
    if estimate:
        lines.append(
            f"\nOne paper FB-M GRU run (1M updates, 51 evaluations): about {estimate['hours']} h "
            f"({estimate['updates_per_s']} updates/s in mode {estimate['mode']}; evaluation {estimate['evaluation_s']} s)"
        )
    return "\n".join(lines) + "\n"


def drive(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": args.device,
        "tiny": args.tiny,
    }
    env = dict(os.environ, PYTHONHASHSEED="0", MUJOCO_GL="disable", BFM_PROGRESS="line")
    paths = [str(ROOT)]
    with tempfile.TemporaryDirectory(prefix="bfm_site_") as site:
        if not args.no_install:
            report["install"] = install_bundle(Path(args.bundle), Path(site))
            paths.append(site)
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        for part in args.parts:
            report[part] = run_part(part, args, env)
            print(f"{part}: {report[part]['status']} ({report[part]['seconds']} s)", flush=True)
            (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    report["paper_run_estimate"] = estimate_paper_run(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(report[p]["status"] == "ok" for p in args.parts) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or str(ROOT / "gpu_check_out"), help="output folder"
    )
    parser.add_argument(
        "--bundle", default=str(ROOT / "gpu_bundle"), help="wheel bundle (scripts/gpu_bundle.py)"
    )
    parser.add_argument("--no_install", action="store_true", help="use this environment's packages")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the dry run)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU dry run of the test suite)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part here
    parser.add_argument("--limit", type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = str(Path(args.out).resolve())  # the parts run in the repository root
    args.limits = dict(LIMITS)
    if args.part is None:
        return drive(args)
    sys.path.insert(0, str(ROOT))
    result = PART_FUNCTIONS[args.part](args)
    (Path(args.out) / f"{args.part}.json").write_text(
        json.dumps({"status": "ok", **result}, indent=2, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
