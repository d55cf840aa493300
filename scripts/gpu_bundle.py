"""Build the wheel bundle that a GPU machine without this project's dependencies needs (``make gpu-bundle``).

    python scripts/gpu_bundle.py [--out gpu_bundle] [--python 3.12] [--limit_mib 58]

The GPU machine of ``scripts/gpu_check.py`` has its own Python 3.12 with torch (CUDA), numpy, scipy,
safetensors, tqdm, matplotlib, pandas and pytest, but not hydra / omegaconf / antlr4, dm_control,
mujoco and their small dependencies. This downloads those wheels for that platform
(``pip download --only-binary=:all: --python-version 3.12 --platform manylinux...``), builds
antlr4-python3-runtime 4.9.3's wheel from its sdist (it has no wheel), and rewrites dm_control's
wheel without ``dm_control/locomotion`` (39 of its 56 MB; the suite domains never import it), so
the bundle fits beside the working tree in what travels to that machine (64 MiB in all). It
prints the size and exits 1 when the bundle exceeds ``--limit_mib``.

On the GPU machine ``scripts/gpu_check.py`` installs it with
``pip install --no-index --no-deps --target <folder> gpu_bundle/*.whl``. Left out on purpose:
labmaze, glfw, pyopengl (dm_control's mazes and on-screen / GL rendering, unused by training) and
imageio-ffmpeg (videos): the tests that need them skip there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Exact versions: those of requirements.txt where pinned there, else the ones this bundle was
# checked with.
WHEELS = (
    "hydra-core==1.3.8",
    "omegaconf==2.3.0",
    "dm_control==1.0.50",
    "mujoco==3.17.0",
    "dm-env==1.6",
    "dm-tree==0.1.10",
    "absl-py==2.5.1",
    "lxml==6.1.3",
    "protobuf==7.36.2",
    "pyparsing==3.3.3",
    "pyyaml==6.0.4",
    "etils==1.15.0",
    "numexpr==2.14.2",
    "imageio==2.38.2",
    "pytest-timeout==2.4.0",
)
SDIST_WHEELS = ("antlr4-python3-runtime==4.9.3",)  # pure Python, published as an sdist only
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
DROP_PREFIXES = ("dm_control/locomotion/",)
LEFT_OUT = ("labmaze", "glfw", "OpenGL", "imageio_ffmpeg")  # modules of dm_control's deps not bundled


def slim_wheel(wheel: Path, drop: tuple[str, ...] = DROP_PREFIXES) -> int:
    """Rewrites ``wheel`` in place without the files under ``drop`` (and their RECORD lines, so pip
    installs it cleanly). Returns the bytes saved."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(drop):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not line.startswith(drop)) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    return before - wheel.stat().st_size


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def build(out: Path, python: str) -> list[Path]:
    """Downloads and builds every wheel into ``out`` (emptied of old wheels first)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip(
        "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python,
        "--implementation", "cp", *platforms, "--dest", str(out), *WHEELS,
    )  # fmt: skip
    pip("wheel", "--quiet", "--no-deps", "--no-binary=:all:", "--wheel-dir", str(out), *SDIST_WHEELS)
    (dm_control,) = out.glob("dm_control-*.whl")
    saved = slim_wheel(dm_control)
    print(f"{dm_control.name}: {saved / 2**20:.1f} MiB of dm_control/locomotion left out")
    return sorted(out.glob("*.whl"))


def check_suite_loads(wheel: Path) -> None:
    """Installs the slim dm_control wheel alone into a temporary folder and builds the walker,
    cheetah and quadruped tasks from it (with this interpreter's mujoco and other dependencies),
    with the packages the bundle leaves out made unimportable."""
    with tempfile.TemporaryDirectory() as tmp:
        pip("install", "--quiet", "--no-index", "--no-deps", "--target", tmp, str(wheel))
        code = (
            "import sys; sys.modules.update(dict.fromkeys(" + repr(LEFT_OUT) + ")); "
            "import dm_control; from dm_control import suite; "
            f"assert dm_control.__file__.startswith({tmp!r}), dm_control.__file__; "
            "[suite.load(d, t).reset() for d, t in (('walker', 'walk'), ('cheetah', 'run'), ('quadruped', 'walk'))]; "
            "print('suite domains load from the slim wheel')"
        )
        subprocess.run(
            [sys.executable, "-c", code], check=True, env={"PYTHONPATH": tmp, "MUJOCO_GL": "disable"}
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "gpu_bundle"), help="bundle folder (default gpu_bundle/)")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version (default 3.12)")
    parser.add_argument(
        "--limit_mib", type=float, default=58.0, help="largest bundle accepted (default 58 MiB)"
    )
    args = parser.parse_args(argv)
    wheels = build(Path(args.out), args.python)
    check_suite_loads(next(w for w in wheels if w.name.startswith("dm_control-")))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(
        f"{total / 2**20:7.2f} MiB  in all ({len(wheels)} wheels) in {args.out}; limit {args.limit_mib} MiB"
    )
    return 0 if total <= args.limit_mib * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
