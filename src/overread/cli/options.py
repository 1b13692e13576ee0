"""Options commands share: the service settings, durations and output paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from overread.errors import ConfigError

if TYPE_CHECKING:
    from overread.service.config import ServiceConfig


def service_settings(
    data_dir: Path | None,
    database_url: str | None,
    **overrides: object,
) -> ServiceConfig:
    """The service configuration: settings (file, environment) plus command-line values."""
    # The service (and SQLAlchemy with it) loads when a command runs, not at CLI start.
    from overread.config import load_settings
    from overread.service.config import service_config

    settings_overrides: dict[str, object] = {}
    if data_dir is not None:
        settings_overrides["data_dir"] = data_dir
    if database_url is not None:
        settings_overrides["database_url"] = database_url
    settings = load_settings(**settings_overrides)
    return service_config(settings, **overrides)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"24h"``, ``"90m"``, ``"30s"``, ``"2d"`` or plain seconds -> seconds.

    Raises
    ------
    ConfigError
        If ``text`` is not such a duration, or is zero.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"not a duration: {text!r} (e.g. 24h, 90m, 30s, 2d)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if seconds <= 0:
        raise ConfigError(f"a duration must be positive: {text!r}")
    return seconds


def output_folder(path: Path, option: str = "--out") -> Path:
    """Make sure the output folder ``path`` exists, before a command does any work.

    Raises
    ------
    ConfigError
        If ``path`` is a file, or the folder cannot be created (a parent that is a
        file, a read-only or missing location).
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{option} {path}: cannot create the folder (a file is in the way)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{option} {path}: cannot create the folder ({exc.strerror or exc})"
        ) from None
    return path


def output_file(path: Path, option: str = "--out") -> Path:
    """Make sure the output file ``path`` can be written: not a folder, its folder made.

    Raises
    ------
    ConfigError
        If ``path`` is a folder, or its folder cannot be created.
    """
    if path.is_dir():
        raise ConfigError(f"{option} {path}: a folder, not a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: {path.parent} is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{option} {path}: cannot create its folder (a file is in the way)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{option} {path}: cannot create its folder ({exc.strerror or exc})"
        ) from None
    return path


def write_output(path: Path, text: str, option: str = "--out") -> None:
    """Write ``text`` (UTF-8) to the output file ``path``.

    Raises
    ------
    ConfigError
        If the file or its folder cannot be written.
    """
    output_file(path, option)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write ({exc.strerror or exc})") from None


__all__ = ["output_file", "output_folder", "parse_duration", "service_settings", "write_output"]
