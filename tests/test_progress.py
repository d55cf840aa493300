"""Progress reports: a tqdm bar on a terminal, a line a minute in a log."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from bfm.data.progress import LineProgress, progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_writes_a_line_per_interval_and_one_at_the_end() -> None:
    clock, out = Clock(), io.StringIO()
    with LineProgress(total=1000, initial=100, desc="fb walker", unit="upd", stream=out, clock=clock) as bar:
        for _ in range(900):
            clock.now += 0.5  # 2 updates/s: a line every 120 updates
            bar.update(1)
            if bar.n == 400:
                bar.set_postfix(eval_iqm="215.3")
    lines = out.getvalue().splitlines()
    assert len(lines) == 450 // 60 + 1  # 7 full minutes, then the rest at close
    assert lines[0] == "fb walker: 220/1000 upd (22 %), 2.0 upd/s, ETA 0:06:30"
    assert lines[-1].startswith("fb walker: 1000/1000 upd (100 %), 2.0 upd/s, eval_iqm=215.3")
    assert "\r" not in out.getvalue()


def test_line_progress_iterates_scales_bytes_and_stays_quiet_when_nothing_moved() -> None:
    clock, out = Clock(), io.StringIO()

    def items():
        for i in range(3):
            clock.now += 30.0
            yield i

    assert list(LineProgress(items(), total=3, desc="collect", unit="ep", stream=out, clock=clock)) == [
        0,
        1,
        2,
    ]
    assert out.getvalue().splitlines() == [
        "collect: 2/3 ep (67 %), 30.0 s/ep, ETA 0:00:30",
        "collect: 3/3 ep (100 %), 30.0 s/ep",
    ]
    bytes_out = io.StringIO()
    bar = LineProgress(
        total=4 * 2**20, unit="B", unit_scale=True, stream=bytes_out, clock=clock, desc="x.zip"
    )
    clock.now += 2.0
    bar.update(2**20)
    bar.close()
    assert bytes_out.getvalue() == "x.zip: 1.0 MiB of 4.0 MiB (25 %), 512.0 KiB/s, ETA 0:00:06\n"
    quiet = io.StringIO()
    LineProgress(total=5, stream=quiet, clock=clock).close()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(("forced", "kind"), [("bar", tqdm), ("line", LineProgress), ("", LineProgress)])
def test_progress_picks_the_kind(monkeypatch: pytest.MonkeyPatch, forced: str, kind: type) -> None:
    monkeypatch.setenv("BFM_PROGRESS", forced)  # pytest's stderr is not a terminal
    bar = progress(total=3, desc="t", unit="x")
    assert isinstance(bar, kind)
    bar.close()
    assert isinstance(progress(total=3, disable=True), tqdm)
