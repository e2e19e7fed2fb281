"""The demo's honest timing (medians, start-up counted, noise named) and ``info``'s report."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shmpool.__main__ import main
from shmpool._demo import noise_notes


def test_a_speed_up_above_the_worker_count_is_called_noisy() -> None:
    notes = noise_notes([2.33, 2.30, 2.35], [1.0, 1.01, 1.0], workers=2)
    assert len(notes) == 1 and "more than 2 workers can give" in notes[0]


def test_scattered_runs_are_called_noisy_and_steady_ones_are_not() -> None:
    assert noise_notes([1.0, 1.02, 1.01], [0.55, 0.56, 0.55], workers=2) == []
    notes = noise_notes([1.0, 1.6, 1.01], [0.55, 0.56, 0.55], workers=2)
    assert len(notes) == 1 and "serial runs differ by 60%" in notes[0]


def test_the_demo_reports_medians_and_start_up() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shmpool", "demo", "--mb", "4", "--workers", "2", "--start-method", "fork"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.count("(median of 3:") == 2
    assert "pool start-up" in out and "end to end, with start-up" in out
    assert "results equal: True" in out


def test_the_demo_refuses_fewer_than_three_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--repeats", "2"])
    assert "at least 3" in capsys.readouterr().err


def test_info_names_the_library_versions(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("libraries: ")]
    for name in ("cloudpickle", "tqdm", "dask", "distributed", "joblib", "threadpoolctl"):
        assert f"{name} {metadata.version(name)}" in line


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["info", "--help"]])
def test_help_has_no_restructuredtext_markup(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "usage: python -m shmpool" in text
    for markup in ("``", ":func:", ":class:", ":meth:", ".. "):
        assert markup not in text
