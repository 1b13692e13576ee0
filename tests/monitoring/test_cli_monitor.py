"""``overread monitor simulate``: bad input is one ``error:`` line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--days", "5"), "--days 5 is below 20"),
        (("--inject-day", "70"), "--inject-day 70 is outside"),
        (("--studies-per-day", "3"), "--studies-per-day 3 is below 10"),
        (("--pool", "10"), "--pool 10 is below 100"),
        (("--seed", "x"), "Invalid value for '--seed'"),
        (("--no-such-option",), "No such option"),
    ],
)
def test_bad_input_is_one_error_line(run_cli, args: tuple[str, ...], message: str) -> None:
    status, out, err = run_cli("monitor", "simulate", *args)
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in err


def test_plots_must_be_a_folder(run_cli, tmp_path: Path) -> None:
    target = tmp_path / "file.png"
    target.write_bytes(b"")
    status, _, err = run_cli("monitor", "simulate", "--plots", target)
    assert status == 2
    assert err.startswith("error: --plots") and "not a folder" in err


def test_monitor_commands_start_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from overread.cli import main\n"
        "try:\n    main(['monitor', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
