from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overread.errors import ConfigError


def test_version_lists_libraries(run_cli) -> None:
    status, out, _ = run_cli("version")
    assert status == 0
    assert out.startswith("overread ")
    assert "torch 2.13.0" in out


def test_config_reads_toml_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    (tmp_path / "overread.toml").write_text('default_model = "cxr-test"\n[dicom]\nport = 4242\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OVERREAD_DICOM__AE_TITLE", "FROMENV")
    status, out, _ = run_cli("config", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["default_model"] == "cxr-test"
    assert data["dicom"]["port"] == 4242
    assert data["dicom"]["ae_title"] == "FROMENV"


def test_invalid_setting_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    (tmp_path / "overread.toml").write_text("[dicom]\nport = 99999\n")
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli("config")
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "dicom.port" in err and "Traceback" not in err


def test_console_script_no_traceback(tmp_path: Path) -> None:
    """The installed entry point prints one line and exits non-zero on a bad config."""
    (tmp_path / "overread.toml").write_text("this is = not [toml")
    proc = subprocess.run(
        [sys.executable, "-m", "overread", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_triage_table_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    (tmp_path / "overread.toml").write_text("[triage]\n[triage.departments]\nED = 30\n")
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli("config", "--json")
    assert status == 0, err
    assert json.loads(out)["triage"]["departments"]["ED"] == 30


# Usage errors: one line on stderr, exit 2, never a traceback, on every command group.


def _groups() -> list[tuple[str, ...]]:
    """The command path of every registered command group, the root included."""
    from overread.cli import _load_commands, app

    _load_commands()

    def walk(typer_app: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        yield path
        for info in typer_app.registered_groups:
            yield from walk(info.typer_instance, (*path, info.name))

    return list(walk(app, ()))


# Per group: a bad option value and a missing argument, each with what the error says.
BAD_VALUE: dict[tuple[str, ...], tuple[list[str], str]] = {
    (): (["serve", "--dicom-port", "not-a-port"], "Invalid value for '--dicom-port'"),
    ("audit",): (["show", "--last", "many"], "Invalid value for '--last'"),
    ("bench",): (["inference", "--repeats", "many"], "Invalid value for '--repeats'"),
    ("db",): (["current", "--verbose"], "No such option: --verbose"),
    ("jobs",): (["list", "--limit", "all"], "Invalid value for '--limit'"),
    ("retention",): (["run", "--images-days", "0"], "Invalid value for '--images-days'"),
    ("labels",): (
        ["split", "--dataset", "d", "--csv", "c.csv", "--out", "o", "--seed", "abc"],
        "Invalid value for '--seed'",
    ),
    ("models",): (["list", "--json=yes"], "Option '--json' does not take a value"),
    ("models", "cohorts"): (["list", "--json=yes"], "Option '--json' does not take a value"),
    ("monitor",): (["simulate", "--seed", "abc"], "Invalid value for '--seed'"),
    ("phantom",): (["cxr", "--n", "many", "--out", "x"], "Invalid value for '--n'"),
    ("stats",): (
        ["mcnemar", "--csv", "x.csv", "--a", "a", "--b", "b", "--exact=sure"],
        "Option '--exact' does not take a value",
    ),
    ("stats", "sample-size"): (
        ["two-proportions", "--p1", "high", "--p2", "0.5"],
        "Invalid value for '--p1'",
    ),
    ("users",): (
        ["token", "alice", "--expires-days", "soon"],
        "Invalid value for '--expires-days'",
    ),
    ("worklist",): (["list", "--limit", "all"], "Invalid value for '--limit'"),
}
MISSING: dict[tuple[str, ...], tuple[list[str], str]] = {
    (): (["predict"], "Missing argument 'paths'"),
    ("audit",): (["export", "--to", "2024-01-01"], "Missing option '--from'"),
    ("bench",): (["inference", "--repeats"], "Option '--repeats' requires an argument"),
    ("db",): (["upgrade", "--data-dir"], "Option '--data-dir' requires an argument"),
    ("jobs",): (["list", "--state"], "Option '--state' requires an argument"),
    ("retention",): (["run", "--jobs-days"], "Option '--jobs-days' requires an argument"),
    ("labels",): (["stats", "--csv", "x.csv"], "Missing option '--dataset'"),
    ("models",): (["show"], "Missing argument 'ref'"),
    ("models", "cohorts"): (["add", "t1"], "Missing argument 'folder'"),
    ("monitor",): (["simulate", "--plots"], "Option '--plots' requires an argument"),
    ("phantom",): (["cxr", "--out", "x"], "Missing option '--n'"),
    ("stats",): (["auc", "--csv", "x.csv"], "Missing option '--truth'"),
    ("stats", "sample-size"): (["auc-precision", "--auc", "0.9"], "Missing option '--half-width'"),
    ("users",): (["add"], "Missing argument 'name'"),
    ("worklist",): (["ack", "3"], "Missing option '--who'"),
}


def _assert_one_line_usage_error(result: tuple[int, str, str], says: str) -> None:
    status, out, err = result
    assert status == 2, err
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.endswith("\n")
    assert err.count("\n") == 1, err
    assert says in err


def test_every_command_group_has_usage_error_cases() -> None:
    groups = set(_groups())
    assert len(groups) >= 10
    assert set(BAD_VALUE) == groups
    assert set(MISSING) == groups


@pytest.mark.parametrize("group", _groups(), ids=lambda g: " ".join(g) or "overread")
def test_unknown_command_is_one_line(group: tuple[str, ...], run_cli) -> None:
    result = run_cli(*group, "frobnicate")
    _assert_one_line_usage_error(result, "No such command 'frobnicate'")
    assert f"'{' '.join(('overread', *group))} --help'" in result[2]


@pytest.mark.parametrize("group", _groups(), ids=lambda g: " ".join(g) or "overread")
def test_unknown_option_is_one_line(group: tuple[str, ...], run_cli) -> None:
    _assert_one_line_usage_error(run_cli(*group, "--no-such-option"), "No such option")


@pytest.mark.parametrize("group", _groups(), ids=lambda g: " ".join(g) or "overread")
def test_bad_option_value_is_one_line(group: tuple[str, ...], run_cli) -> None:
    args, says = BAD_VALUE[group]
    _assert_one_line_usage_error(run_cli(*group, *args), says)


@pytest.mark.parametrize("group", _groups(), ids=lambda g: " ".join(g) or "overread")
def test_missing_argument_is_one_line(group: tuple[str, ...], run_cli) -> None:
    args, says = MISSING[group]
    _assert_one_line_usage_error(run_cli(*group, *args), says)


def test_bad_parameter_raised_by_a_command_is_one_line(run_cli) -> None:
    """``typer.BadParameter`` from inside a command body, before any model loads."""
    result = run_cli("predict", "--cam", "bogus", "x.dcm")
    _assert_one_line_usage_error(result, "unknown CAM method 'bogus'")


def test_group_without_command_prints_its_help(run_cli) -> None:
    status, out, err = run_cli("models")
    assert status == 2
    assert "Traceback" not in err
    for command in ("list", "show", "verify", "import", "alias", "rollback"):
        assert command in out


def test_debug_still_raises_and_does_not_stick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    (tmp_path / "overread.toml").write_text("[dicom]\nport = 99999\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        run_cli("--debug", "config")
    status, _, err = run_cli("config")
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_some_inputs_failing_is_still_exit_1(tmp_path: Path, run_cli) -> None:
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 10)
    status, _, err = run_cli("inspect", tmp_path / "broken.dcm")
    assert status == 1
    assert err.startswith(str(tmp_path / "broken.dcm") + ": ")


# Bad paths: a file where a folder is wanted and the reverse, a path through a file,
# bytes that are not text. Each is one line naming the path, exit 2, never a traceback.
# FILE is a regular file, DIR an existing folder, BYTES a file of non-UTF-8 bytes.
BAD_PATHS: list[tuple[str, ...]] = [
    ("phantom", "cxr", "--n", "1", "--size", "64", "--quiet", "--out", "FILE"),
    ("phantom", "ct", "--n", "1", "--size", "64", "--quiet", "--out", "FILE/x"),
    ("phantom", "previews", "--size", "64", "--out", "FILE"),
    ("phantom", "lateral", "--n", "1", "--size", "64", "--out", "FILE/x"),
    ("evaluate", "--predictions", "DIR", "--labels", "DIR", "--out", "OUT"),
    ("evaluate", "--predictions", "DIR", "--labels", "DIR", "--out", "FILE"),
    ("evaluate", "--predictions", "DIR", "--labels", "DIR", "--out", "OUT", "--rule", "nope"),
    ("stats", "auc", "--csv", "DIR", "--truth", "y", "--score", "a"),
    ("stats", "kappa", "--csv", "CSV", "--raters", "a,b", "--weights", "nope"),
    ("train", "BYTES", "--show-config"),
    ("worklist", "sweep", "--triage-config", "BYTES", "--data-dir", "DATA"),
    ("worklist", "export-feedback", "DIR", "--data-dir", "DATA"),
    ("audit", "export", "--from", "2020-01-01", "--to", "2030-01-01", "--out", "DIR"),
    ("db", "current", "--data-dir", "FILE"),
    ("users", "list", "--data-dir", "FILE/x"),
    ("models", "governance-report", "--out", "DIR"),
    ("deid", "FILE", "FILE/x", "--salt-file", "FILE"),
    ("deid", "FILE", "OUT", "--salt-file", "FILE", "--report", "DIR"),
    ("export", "cxr-default", "--onnx", "--out", "FILE/x"),
    ("models", "gate-report", "--model", "cxr-default", "--data", "BYTES"),
]


@pytest.mark.parametrize("args", BAD_PATHS, ids=lambda a: " ".join(a[:2]))
def test_bad_path_is_one_line(
    args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    monkeypatch.setenv("OVERREAD_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "FILE").write_text("salt\n", encoding="utf-8")
    (tmp_path / "DIR").mkdir()
    (tmp_path / "BYTES").write_bytes(bytes(range(128, 256)) * 8)
    (tmp_path / "CSV").write_text("y,a,b\n1,1,0\n0,0,0\n1,1,1\n", encoding="utf-8")
    named = {"FILE", "FILE/x", "DIR", "BYTES", "CSV", "OUT", "DATA"}
    status, _, err = run_cli(*(tmp_path / a if a in named else a for a in args))
    assert "Traceback" not in err
    assert status == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err  # progress may precede
    assert str(tmp_path) in errors[0] or "nope" in errors[0]


REFUSED_BEFORE_WORK: list[tuple[tuple[str, ...], str]] = [
    (("evaluate", "--predictions", "NONE", "--labels", "NONE", "--out", "OUT"), "no such file"),
    (("evaluate", "--model", "cxr-default", "--out", "OUT"), "--model and --data go together"),
    (("evaluate", "--predictions", "CSV", "--out", "OUT"), "give --model and --data"),
    (
        ("evaluate", "--predictions", "CSV", "--labels", "CSV", "--resamples", "0", "--out", "OUT"),
        "--resamples: at least 1",
    ),
    (("deid", "FILE", "OUT", "--salt-file", "FILE", "--report", "DIR"), "a folder, not a file"),
]


@pytest.mark.parametrize(("args", "says"), REFUSED_BEFORE_WORK, ids=lambda a: str(a)[:40])
def test_a_refused_run_creates_no_output(
    args: tuple[str, ...], says: str, tmp_path: Path, run_cli
) -> None:
    (tmp_path / "FILE").write_text("salt\n", encoding="utf-8")
    (tmp_path / "DIR").mkdir()
    (tmp_path / "CSV").write_text("id,y\n1,1\n", encoding="utf-8")
    named = {"FILE", "DIR", "CSV", "OUT", "NONE"}
    status, _, err = run_cli(*(tmp_path / a if a in named else a for a in args))
    assert status == 2 and err.startswith("error: ") and says in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "OUT").exists()


def test_a_bad_database_url_is_said_without_its_password(run_cli) -> None:
    for url in ("bob:s3cret@host/db", "postgresql://bob:s3cret@host:notaport/db"):
        status, _, err = run_cli("db", "current", "--database-url", url)
        assert status == 2 and err.startswith("error: invalid database URL"), err
        assert "s3cret" not in err and "bob:***@host" in err
        assert len(err.strip().splitlines()) == 1


def test_unknown_command_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "overread", "frobnicate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr == "error: No such command 'frobnicate'. (see 'overread --help')\n"


# Start-up: the light commands never import torch or MONAI.

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "overread" / "examples"
HEAVY = ("torch", "monai")


def _imported_modules(
    args: list[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m overread ARGS``; every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "overread", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return proc, modules


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["version"],
        ["config", "--json"],
        ["inspect", str(EXAMPLES)],
        ["models", "--help"],
    ],
    ids=["--help", "version", "config", "inspect", "models --help"],
)
def test_light_commands_start_without_torch_or_monai(args: list[str], tmp_path: Path) -> None:
    proc, modules = _imported_modules(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "overread.cli" in modules  # the importtime report was read
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_importtime_parsing_sees_torch_when_it_is_imported(tmp_path: Path) -> None:
    """The check above would notice: a command that needs torch shows it."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import torch"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" in names


def test_help_lists_every_command_with_its_help(run_cli) -> None:
    import typer

    from overread.cli import _load_commands, app

    _load_commands()
    status, out, _ = run_cli("--help")
    assert status == 0
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert set(commands) >= {
        "audit", "bench", "config", "demo", "evaluate", "export", "inspect", "jobs", "labels", "models",
        "phantom", "predict", "send", "serve", "stats", "train", "users", "version", "worker",
        "worklist",
    }  # fmt: skip
    for name, command in commands.items():
        assert f" {name} " in out
        help_start = " ".join((command.help or "").split()[:3])
        assert help_start and help_start in out, name


def test_help_imports_neither_settings_nor_database(tmp_path: Path) -> None:
    """``overread --help`` lists commands; it needs no settings, database or imaging."""
    proc, modules = _imported_modules(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "overread.cli" in modules
    unneeded = ("pydantic_settings", "sqlalchemy", "alembic", "pydicom", "numpy", "fastapi")
    assert sorted(m for m in modules if m.split(".")[0] in unneeded) == []


def test_an_unwritable_registry_is_one_line_on_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    from overread.models.registry import bundled_dir

    (tmp_path / "FILE").write_text("x\n", encoding="utf-8")
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "FILE" / "registry"))
    status, _, err = run_cli("models", "import", bundled_dir() / "cxr-default")
    assert status == 2 and err.startswith("error: ") and "a file is in the way" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [("db", "current"), ("users", "list"), ("jobs", "list")])
def test_an_unreachable_database_is_one_line(command: tuple[str, ...], run_cli) -> None:
    pytest.importorskip("psycopg")
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    url = "postgresql+psycopg://reader:s3cret@127.0.0.1:1/overread"
    status, _, err = run_cli(*command, "--database-url", url)
    assert status == 2 and err.startswith("error: the database cannot be used: "), err
    assert "Connection refused" in err and "s3cret" not in err
    assert len(err.strip().splitlines()) == 1


def test_only_a_database_error_is_turned_into_a_line() -> None:
    import sqlalchemy.exc

    from overread.cli import _database_unreachable

    assert _database_unreachable(ValueError("a bug")) is None
    assert _database_unreachable(sqlalchemy.exc.IntegrityError("x", {}, Exception())) is None
    said = _database_unreachable(
        sqlalchemy.exc.OperationalError("x", {}, Exception("database is locked"))
    )
    assert said == "the database cannot be used: database is locked"
