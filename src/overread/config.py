"""One typed settings object for the whole application.

Values come, in increasing order of precedence, from the defaults below, an
``overread.toml`` file (the working directory's, or the one named by
``OVERREAD_CONFIG``), and ``OVERREAD_*`` environment variables (nested fields use
``__``, e.g. ``OVERREAD_DICOM__PORT=11112``). Nothing reads settings at import
time: call :func:`load_settings` where they are needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from overread.errors import ConfigError


class DicomSettings(BaseModel):
    """DICOM network settings of the gateway."""

    ae_title: str = Field(default="OVERREAD", min_length=1, max_length=16)
    port: int = Field(default=11112, ge=0, le=65535)
    allow_ae: list[str] = Field(default_factory=list)
    allow_query_ae: list[str] = Field(default_factory=list)
    stable_seconds: float = Field(default=60.0, ge=0)


class HttpSettings(BaseModel):
    """HTTP (REST, DICOMweb, web UI) settings."""

    host: str = "127.0.0.1"
    port: int = Field(default=8042, ge=0, le=65535)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDR networks of reverse proxies whose X-Forwarded-For "
        "header names the client; empty trusts none",
    )


class ImagingSettings(BaseModel):
    """How strictly the imaging core treats questionable input.

    ``strictness`` follows pydicom's IGNORE/WARN/RAISE model: ``warn`` records
    a warning on the image and carries on; ``raise`` refuses the file.
    """

    strictness: str = Field(default="warn", pattern="^(ignore|warn|raise)$")
    max_frames: int = Field(default=10_000, ge=1)
    max_pixels: int = Field(default=2_000_000_000, ge=1)
    # Run a model's chain on an area-reduced film when the result is within 1e-3 of
    # the full-resolution order (see overread.imaging.transforms.reduced).
    reduce_first: bool = True


class InferenceSettings(BaseModel):
    """Which runtime serves a model package by default.

    ``runtime`` ``onnx`` (ONNX Runtime, the default) or ``torch``; ``precision``
    ``auto`` (the package's INT8 model when it has one and it agrees with FP32 on
    this CPU), ``fp32`` or ``int8``. ``overread bench inference`` measures each
    runtime side by side on the node, which is how to choose. ``device`` ``auto``
    (a GPU when one is usable: ONNX Runtime's CUDA execution provider, torch's CUDA;
    else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    runtime: str = Field(default="onnx", pattern="^(onnx|torch)$")
    precision: str = Field(default="auto", pattern="^(auto|fp32|int8)$")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")


class Settings(BaseSettings):
    """All of overread's settings."""

    model_config = SettingsConfigDict(
        env_prefix="OVERREAD_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("overread-data")
    database_url: str | None = None
    model_registry: Path | None = None
    default_model: str = "cxr-default"
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    # The [service] table (routes, destinations, workers); validated by overread.service.config.
    service: dict[str, Any] = Field(default_factory=dict)
    # The worklist/alert table; validated by overread.triage.TriageConfig where it is used.
    triage: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("OVERREAD_CONFIG", "overread.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'overread.db').resolve()}"


def load_settings(**overrides: Any) -> Settings:
    """Load settings from file and environment, with explicit overrides on top.

    Raises
    ------
    ConfigError
        If the file cannot be parsed or a value is invalid; the message names the
        offending field.
    """
    config_env = os.environ.get("OVERREAD_CONFIG")
    if config_env and not Path(config_env).is_file():
        raise ConfigError(f"{config_env}: configuration file named by OVERREAD_CONFIG not found")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"cannot read configuration: {exc}") from None


__all__ = ["DicomSettings", "HttpSettings", "ImagingSettings", "Settings", "load_settings"]
