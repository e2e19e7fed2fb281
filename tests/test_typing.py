"""What type checkers are told: mypy, with the project's settings, on tests/typing_check.py,
whose comments say what it must report on each line (and that nothing else may fail)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = Path(__file__).resolve().parent / "typing_check.py"
MARK = re.compile(r"\S  # (reveal|error): (.+?)\s*$")  # a comment after code
REPORT = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): (?P<kind>note|error): (?P<text>.*)$")
REVEALED = re.compile(r'^Revealed type is "(?P<type>.*)"$')


def expected_marks() -> dict[int, tuple[str, str]]:
    """Line number -> (``reveal`` or ``error``, the text after it) from the file's comments."""
    marks = {}
    for number, line in enumerate(CHECKED.read_text().splitlines(), start=1):
        found = MARK.search(line)
        if found:
            marks[number] = (found.group(1), found.group(2))
    return marks


def run_mypy(cache: Path) -> list[tuple[int, str, str]]:
    """mypy's notes and errors on the checked file, as (line, note or error, message)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(cache),
            "--no-error-summary",
            "--hide-error-context",
            "--no-pretty",
            # Only this file's reports: shmpool itself is checked by CI's mypy step, and
            # older NumPy stubs (the ones Python 3.10 gets) report other things in it.
            "--follow-imports=silent",
            str(CHECKED.relative_to(ROOT)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 2: mypy itself failed
    reports = []
    for line in done.stdout.splitlines():
        found = REPORT.match(line)
        assert found, f"unexpected mypy output: {line!r}\n{done.stdout}"
        assert Path(found["path"]).name == CHECKED.name, f"a report on another file: {line!r}"
        reports.append((int(found["line"]), found["kind"], found["text"]))
    return reports


def test_allocation_methods_return_each_pools_own_array_type(tmp_path: Path) -> None:
    marks = expected_marks()
    assert sum(kind == "reveal" for kind, _ in marks.values()) >= 21  # 7 methods x 3 pools
    assert any(kind == "error" for kind, _ in marks.values())
    reports = run_mypy(tmp_path / "mypy-cache")
    seen: dict[int, list[tuple[str, str]]] = {}
    for number, kind, text in reports:
        seen.setdefault(number, []).append((kind, text))

    unexpected = {n: r for n, r in seen.items() if n not in marks}
    assert not unexpected, f"mypy reported lines that should pass: {unexpected}"
    for number, (kind, want) in marks.items():
        got = seen.get(number, [])
        assert len(got) == 1, f"line {number}: want one {kind} ({want}), mypy said {got}"
        got_kind, text = got[0]
        if kind == "reveal":
            revealed = REVEALED.match(text)
            assert got_kind == "note" and revealed, f"line {number}: {got}"
            assert revealed["type"].startswith(want), (
                f"line {number}: revealed {revealed['type']!r}, want {want!r}..."
            )
        else:
            assert got_kind == "error" and text.endswith(f"  {want}"), (
                f"line {number}: want error {want}, got {got}"
            )
