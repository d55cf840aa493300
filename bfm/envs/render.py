"""Videos and filmstrips of recorded episodes, rendered by MuJoCo in a child process.

A rollout records the physics state ([qpos, qvel, act]) of the frames to show, with a caption and
a mark per frame (``Recording``); ``render`` replays the states in a fresh physics of the domain
and writes ``<name>.mp4`` (imageio / ffmpeg) and ``<name>.png`` (a filmstrip of a few frames).

Rendering needs an OpenGL backend, chosen by ``MUJOCO_GL`` before dm_control is first imported;
this package sets ``disable`` so that nothing else ever needs one. So the frames are drawn in a
child process (``python -m bfm.envs.render SPEC``) started with ``MUJOCO_GL=egl`` (headless, Mesa
works on CPU-only machines) and, when that fails, ``osmesa``; ``glfw`` needs a display. A
recording costs nothing to the rollout but a state copy every ``every`` steps, so evaluations
without video are not slowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

from bfm.envs.physics import make_physics

BACKENDS = ("egl", "osmesa")
CAMERAS = {"walker": 0, "cheetah": 0, "quadruped": 2}  # side views (quadruped: the suite's "x")
EXIT_NO_GL = 3  # the child's exit code when no backend can render
# The child: a backend that cannot start fails at dm_control's import or at the first frame (exit 3).
_CHILD = """
import sys
try:
    from bfm.envs import render
except Exception as error:
    print(f"{type(error).__name__}: {error}".strip().splitlines()[0], file=sys.stderr)
    sys.exit(3)
sys.exit(render._child(sys.argv[1]))
"""


class RenderError(RuntimeError):
    """No OpenGL backend could render, or the video could not be written; the message says why."""


@dataclasses.dataclass
class Recording:
    """The frames of one episode to render.

    Attributes:
        name: file stem of the outputs (``<name>.mp4``, ``<name>.png``).
        domain: walker, cheetah or quadruped.
        multiplier: the dynamics multiplier of the episode's model.
        states: [F, P] physics states ([qpos, qvel, act]) of the frames.
        captions: [F] one caption per frame (prompt, step, return so far).
        marks: [F] what the agent did not get at that frame ("" when it got the observation).
        fps: frames per second of the video.
    """

    name: str
    domain: str
    multiplier: float
    states: np.ndarray
    captions: list[str]
    marks: list[str]
    fps: float = 10.0


def render(
    recordings: Sequence[Recording],
    out_dir: str | os.PathLike,
    width: int = 320,
    height: int = 240,
    filmstrip_frames: int = 6,
    backends: Sequence[str] | None = None,
) -> list[Path]:
    """Writes ``<name>.mp4`` and ``<name>.png`` of every recording into ``out_dir``.

    Returns:
        The written files.

    Raises:
        RenderError: no backend of ``backends`` can render here (the message names what was tried),
            or the child failed otherwise.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bfm_render_") as tmp:
        spec = {
            "out_dir": str(out),
            "width": width,
            "height": height,
            "filmstrip": filmstrip_frames,
            "videos": [],
        }
        for k, rec in enumerate(recordings):
            states = Path(tmp) / f"{k}.npy"
            np.save(states, np.asarray(rec.states, dtype=np.float64))
            fields = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name != "states"}
            spec["videos"].append({**fields, "states": str(states)})
        return _run_child(spec, tmp, backends)[1]


def check_gl(backends: Sequence[str] | None = None) -> str:
    """The first backend of ``backends`` that renders here (a child process draws one tiny frame).

    Raises:
        RenderError: none does (the message names what was tried and what to install).
    """
    with tempfile.TemporaryDirectory(prefix="bfm_render_") as tmp:
        return _run_child(
            {"out_dir": tmp, "width": 8, "height": 8, "filmstrip": 1, "videos": []}, tmp, backends
        )[0]


def _run_child(spec: dict, tmp: str, backends: Sequence[str] | None) -> tuple[str, list[Path]]:
    """Runs the child on ``spec`` with each backend in turn (default ``BACKENDS``) until one
    works; (that backend, the written files)."""
    (Path(tmp) / "spec.json").write_text(json.dumps(spec))
    failures = []
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports bfm from wherever it runs
    for backend in BACKENDS if backends is None else backends:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(Path(tmp) / "spec.json")],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return backend, [Path(p) for p in done.stdout.split()]
        message = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1][:200]
        if done.returncode != EXIT_NO_GL:  # GL worked: the video itself failed
            raise RenderError(
                f"rendering failed with MUJOCO_GL={backend}: {message}; try a smaller --video_size, or run "
                "without --video"
            )
        failures.append(f"{backend}: {message}")
    raise RenderError(
        f"no usable OpenGL backend for video ({'; '.join(failures)}); install Mesa's EGL (libegl1) or OSMesa "
        "(libosmesa6), or run without video"
    )


def _caption(frame: np.ndarray, caption: str, mark: str) -> np.ndarray:
    """The frame with the caption at the top and, when ``mark`` is set, a red border and the mark."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image, "RGBA")
    w, h = image.size
    draw.rectangle([0, 0, w, 14], fill=(0, 0, 0, 150))
    draw.text((3, 2), caption, fill=(255, 255, 255, 255))
    if mark:
        draw.rectangle([0, 0, w - 1, h - 1], outline=(230, 30, 30, 255), width=4)
        draw.rectangle([0, h - 16, w, h], fill=(180, 20, 20, 200))
        draw.text((4, h - 14), mark, fill=(255, 255, 255, 255))
    return np.asarray(image)


def _render_all(spec: dict) -> list[str]:
    """Child process: every video of ``spec`` (see ``render``); returns the written paths."""
    written = []
    out = Path(spec["out_dir"])
    w, h = spec["width"], spec["height"]
    physics_by_key: dict[tuple[str, float], object] = {}
    for video in spec["videos"]:
        key = (video["domain"], float(video["multiplier"]))
        if key not in physics_by_key:
            physics_by_key[key] = make_physics(*key)
        physics = physics_by_key[key]
        frames = []
        for state, caption, mark in zip(
            np.load(video["states"]), video["captions"], video["marks"], strict=True
        ):
            with physics.reset_context():
                physics.set_state(state)
            frame = physics.render(h, w, camera_id=CAMERAS[video["domain"]])
            frames.append(_caption(frame, caption, mark))
        path = out / f"{video['name']}.mp4"
        imageio.mimwrite(path, frames, fps=video["fps"], codec="libx264", macro_block_size=8, quality=7)
        written.append(str(path))
        picks = np.linspace(0, len(frames) - 1, min(spec["filmstrip"], len(frames))).round().astype(int)
        strip = np.concatenate([frames[i] for i in picks], axis=1)
        strip_path = out / f"{video['name']}.png"
        Image.fromarray(strip).save(strip_path, optimize=True)
        written.append(str(strip_path))
    return written


def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    try:
        make_physics(spec["videos"][0]["domain"] if spec["videos"] else "walker").render(8, 8)
    except Exception as error:  # any failure to create a GL context: try the next backend
        print(
            f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}",
            file=sys.stderr,
        )
        return EXIT_NO_GL
    print("\n".join(_render_all(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
