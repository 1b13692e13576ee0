"""Typed configuration of the gateway: destinations, routing rules, workers.

The application-wide :class:`overread.config.Settings` keeps the ``[service]`` table of
``overread.toml`` as plain data; :func:`service_config` validates it here, merges the
``[dicom]``/``[http]`` settings and any command-line overrides on top, and raises
:class:`~overread.errors.ConfigError` naming the offending rule or field, so a bad
routing rule stops the service at start rather than misrouting studies later.

Example ``overread.toml``::

    [dicom]
    ae_title = "OVERREAD"
    port = 11112
    allow_ae = ["MODALITY@127.0.0.1", "CR01"]
    allow_query_ae = ["VIEWER@10.0.0.9"]        # who may C-FIND / C-MOVE (empty: anyone)
    stable_seconds = 30

    [http]
    trusted_proxies = ["10.0.0.2", "192.168.10.0/24"]  # reverse proxies: see docs/security.md

    [service]
    workers = 2
    destinations = ["PACS=PACSAE@10.0.0.5:104"]
    query_peers = ["PACS=PACSAE@10.0.0.5:104"]  # C-FIND for priors, C-MOVE/C-GET to fetch

    fhir_endpoints = [{name = "ehr", url = "https://fhir.example.org/r4", bearer_token = "..."}]
    hl7_endpoints = ["ris=10.0.0.7:2575"]
    hl7_listen_port = 2575
    stow_endpoints = [{name = "vna", url = "https://vna.example.org/dicom-web", username = "overread", password = "..."}]
    model_signing_key_file = "/etc/overread/model-signing.key"

    [[service.routes]]
    name = "chest-xray"
    modality = ["CR", "DX"]
    body_part = ["CHEST"]
    models = ["cxr-default"]
    destinations = ["PACS"]
    complete_on_release = true
"""

from __future__ import annotations

import ipaddress
import logging
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from overread.config import Settings
from overread.errors import ConfigError
from overread.service.monitor.settings import MonitoringSettings
from overread.service.retention_settings import RetentionSettings
from overread.service.site_calibration import SiteCalibrationSettings

_AE_RE = re.compile(r"^[ -~]{1,16}$")


def _check_ae_title(value: str) -> str:
    """Return a valid AE title (1-16 printable ASCII characters, no backslash)."""
    stripped = value.strip()
    if not stripped or not _AE_RE.match(stripped) or "\\" in stripped:
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable ASCII characters)")
    return stripped


class Destination(BaseModel):
    """A DICOM node that results are sent to (C-STORE SCP)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    deidentify: tuple[str, ...] | None = Field(
        default=None,
        description="de-identify every object sent here: 'basic' plus PS3.15 options "
        "(retain-modified-dates, retain-device-identity; clean-structured-content is "
        "always added); None sends them as they are",
    )

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("deidentify")
    @classmethod
    def _known_profile(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        from overread.imaging.deid import profile_options

        try:
            options = profile_options(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if "clean-pixel-data" in options:
            raise ValueError(
                "clean-pixel-data is for received images (overread deid); results carry "
                "no burned-in text"
            )
        # The results are the gateway's own SRs, whose content is generated: keep it
        # (cleaned) rather than send an SR with its findings removed.
        return profile_options((*options, "clean-structured-content"))

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``NAME=AE@host:port`` (or ``AE@host:port``, named after its AE title)."""
        return cls(**_dicom_node(text, "destination"))

    def __str__(self) -> str:
        return f"{self.name}={self.ae_title}@{self.host}:{self.port}"


class FhirEndpoint(BaseModel):
    """A FHIR R4 server that each study's DiagnosticReport bundle is posted to.

    The token and headers live in the configuration only; export jobs name the
    endpoint, so no secret is written to the job table.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="fhir", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(pattern=r"^https?://\S+$", description="the server's base URL")
    bearer_token: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers")
    timeout_seconds: float = Field(default=30.0, gt=0)

    @classmethod
    def parse(cls, text: str, *, default_name: str = "fhir") -> FhirEndpoint:
        """Parse ``URL`` or ``NAME=URL``."""
        name, sep, url = text.partition("=")
        if not sep or "://" in name:
            name, url = default_name, text
        try:
            return cls(name=name.strip(), url=url.strip())
        except ValidationError as exc:
            raise ConfigError(
                f"FHIR endpoint {text!r}: expected URL or NAME=URL with http(s) "
                f"({exc.errors()[0]['msg']})"
            ) from None

    def __str__(self) -> str:
        return f"{self.name}={self.url}"


class Hl7Endpoint(BaseModel):
    """An HL7 v2 receiver (RIS, EHR interface engine) that each result's ORU^R01 is sent
    to over MLLP; ``AA`` is delivered, anything else (or no answer) is retried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="hl7", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    receiving_application: str = Field(default="", description="MSH-5")
    receiving_facility: str = Field(default="", description="MSH-6")
    timeout_seconds: float = Field(default=30.0, gt=0, description="wait for the ACK")

    @classmethod
    def parse(cls, text: str, *, default_name: str = "hl7") -> Hl7Endpoint:
        """Parse ``HOST:PORT`` or ``NAME=HOST:PORT``."""
        name, sep, address = text.partition("=")
        if not sep:
            name, address = default_name, text
        host, colon, port = address.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ConfigError(f"HL7 endpoint {text!r}: expected HOST:PORT or NAME=HOST:PORT")
        try:
            return cls(name=name.strip(), host=host, port=int(port))
        except ValidationError as exc:
            raise ConfigError(f"HL7 endpoint {text!r}: {exc.errors()[0]['msg']}") from None

    def __str__(self) -> str:
        return f"{self.name}={self.host}:{self.port}"


class StowEndpoint(BaseModel):
    """A DICOMweb server each result's DICOM objects (SR, SEG, overlays) are stored on
    with STOW-RS. Credentials (HTTP basic or a bearer token) live in the
    configuration only; export jobs name the endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="stow", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(pattern=r"^https?://\S+$", description="the DICOMweb root (.../dicom-web)")
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers")
    timeout_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> StowEndpoint:
        if self.bearer_token is not None and self.username is not None:
            raise ValueError("a STOW-RS endpoint takes username/password or bearer_token, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("a STOW-RS endpoint's basic auth needs both username and password")
        return self

    @classmethod
    def parse(cls, text: str, *, default_name: str = "stow") -> StowEndpoint:
        """Parse ``URL`` or ``NAME=URL``."""
        name, sep, url = text.partition("=")
        if not sep or "://" in name:
            name, url = default_name, text
        try:
            return cls(name=name.strip(), url=url.strip())
        except ValidationError as exc:
            raise ConfigError(
                f"STOW-RS endpoint {text!r}: expected URL or NAME=URL with http(s) "
                f"({exc.errors()[0]['msg']})"
            ) from None

    def __str__(self) -> str:
        return f"{self.name}={self.url}"


class AllowedPeer(BaseModel):
    """A calling AE title allowed to send, optionally only from one host."""

    model_config = ConfigDict(frozen=True)

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedPeer:
        """Parse ``AET`` or ``AET@host``."""
        ae_title, _, host = text.partition("@")
        try:
            return cls(ae_title=_check_ae_title(ae_title), host=host.strip() or None)
        except ValueError as exc:
            raise ConfigError(f"--allow-ae {text!r}: {exc}") from None

    def admits(self, ae_title: str, host: str) -> bool:
        """Whether a peer calling as ``ae_title`` from ``host`` is this one."""
        return ae_title.strip() == self.ae_title and (self.host is None or self.host == host)


def _dicom_node(text: str, what: str) -> dict[str, Any]:
    """The fields of ``NAME=AE@host:port`` (or ``AE@host:port``, named after its AE
    title), checked as a :class:`Destination` checks them.

    Raises
    ------
    ConfigError
        Naming ``what`` the text was meant to be and what is wrong with it.
    """
    name, sep, address = text.partition("=")
    if not sep:
        address, name = text, ""
    ae_title, at, hostport = address.partition("@")
    host, colon, port = hostport.rpartition(":")
    if not at or not colon or not host or not port.isdigit():
        raise ConfigError(
            f"{what} {text!r}: expected NAME=AE@host:port, e.g. PACS=PACSAE@10.0.0.5:104"
        )
    fields = {
        "name": name or ae_title.strip(),
        "ae_title": ae_title,
        "host": host,
        "port": int(port),
    }
    try:
        Destination.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"{what} {text!r}: {exc.errors()[0]['msg']}") from None
    return fields


class QueryPeer(BaseModel):
    """A PACS the gateway queries and retrieves from (its C-FIND, C-MOVE, C-GET SCP)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @classmethod
    def parse(cls, text: str) -> QueryPeer:
        """Parse ``NAME=AE@host:port`` (or ``AE@host:port``, named after its AE title)."""
        return cls(**_dicom_node(text, "query peer"))

    def __str__(self) -> str:
        return f"{self.name}={self.ae_title}@{self.host}:{self.port}"


class RoutingMode(StrEnum):
    """How the matching rules of a study combine."""

    ALL = "all"
    """Every matching rule applies (models run once, destinations unite)."""
    FIRST_MATCH = "first-match"
    """Only the first matching rule applies: highest ``priority``, then file order."""


class ReviewTimeout(StrEnum):
    """What happens to a result still pending review when its route's time-out passes."""

    ESCALATE = "escalate"
    """Raise a "review overdue" alert through the triage channels (and their escalation);
    the result stays held."""
    RELEASE_UNVERIFIED = "release-unverified"
    """Release the exports as they are: UNVERIFIED, preliminary (the alert is raised too)."""


class Route(BaseModel):
    """One routing rule: which studies go to which models, and where results go.

    Every condition is optional; a study matches when at least one of its instances
    satisfies all the conditions given. List conditions match case-insensitively;
    the empty string in a list matches an instance where the attribute is absent.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    modality: list[str] | None = None
    body_part: list[str] | None = None
    view_position: list[str] | None = None
    sop_class_uid: list[str] | None = None
    calling_ae: list[str] | None = None
    institution: list[str] | None = None
    series_description: str | None = Field(default=None, description="regular expression, searched")
    models: list[str] = Field(min_length=1)
    priority: int = 0
    destinations: list[str] | None = Field(
        default=None, description="destination names; None means every configured destination"
    )
    complete_on_release: bool = False
    fallback: bool = Field(
        default=False,
        description="apply only to studies that no other (non-fallback) rule matches",
    )
    review: bool = Field(
        default=False,
        description="hold results as pending review: nothing is exported until a reader "
        "accepts or edits them (a reject sends nothing)",
    )
    review_timeout_seconds: float | None = Field(
        default=None, gt=0, description="after this long pending, the review is overdue"
    )
    review_on_timeout: ReviewTimeout = Field(
        default=ReviewTimeout.ESCALATE,
        description="escalate (alert, keep holding) or release-unverified",
    )

    @field_validator("series_description")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"series_description is not a valid regular expression: {exc}"
                ) from None
        return value

    @field_validator("models")
    @classmethod
    def _non_empty_models(cls, value: list[str]) -> list[str]:
        if any(not m.strip() for m in value):
            raise ValueError("model aliases must not be empty")
        return value


logger = logging.getLogger(__name__)

#: The backoff's cap: a destination that is back gets its queued exports within it.
MAX_RETRY_SECONDS = 60.0

DEFAULT_ROUTES: tuple[Route, ...] = (
    Route(
        name="chest-xray",
        modality=["CR", "DX"],
        body_part=["CHEST"],
        models=["cxr-default"],
        complete_on_release=True,
    ),
    # CT series go to the two-stage nodule CAD at its balanced operating point (the
    # HU-threshold baseline stays available by name); a study with both CT and
    # radiographs gets both.
    Route(
        name="chest-ct",
        modality=["CT"],
        models=["ct-nodule-cad"],
        complete_on_release=True,
    ),
)


class ServiceConfig(BaseModel):
    """Everything ``overread serve`` needs, validated as a whole."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    database_url: str
    ae_title: str = "OVERREAD"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(default=8042, ge=0, le=65535)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDR networks of reverse proxies trusted to name the "
        "client in X-Forwarded-For (and the scheme in X-Forwarded-Proto); empty trusts none",
    )
    login_account_budget: int = Field(
        default=5, ge=1, description="failed logins of one account before it is locked"
    )
    login_address_budget: int = Field(
        default=50,
        ge=1,
        description="failed logins from one address before it is locked for the accounts "
        "with failures of their own",
    )
    login_address_ceiling: int = Field(
        default=500, ge=1, description="failed logins from one address before it is locked for all"
    )
    login_lockout_seconds: float = Field(
        default=1.0, gt=0, description="the first lockout; each further failure doubles it"
    )
    allow_ae: list[AllowedPeer] = Field(default_factory=list)
    allow_query_ae: list[AllowedPeer] = Field(
        default_factory=list,
        description="calling AEs (AET or AET@host) allowed to C-FIND and C-MOVE; empty "
        "allows any calling AE the association admits",
    )
    query_peers: list[QueryPeer] = Field(
        default_factory=list,
        description="PACS queried for prior studies and retrieved from (NAME=AE@host:port)",
    )
    max_associations: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="associations at once; a connection that has not yet sent its "
        "A-ASSOCIATE-RQ does not count",
    )
    dicom_receivers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes receiving on the DICOM port (sharing one listening socket); "
        "more than one lets concurrent associations use more than one core "
        "(max_associations is shared out over them: together they admit that many)",
    )
    audit_checkpoint_events: int = Field(
        default=100,
        ge=0,
        description="write a signed audit checkpoint after this many new events (0: off)",
    )
    audit_checkpoint_seconds: float = Field(
        default=300.0,
        ge=0,
        description="write one this long after the last when any event was recorded (0: off)",
    )
    dicom_tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the DICOM port; with its key the port "
        "speaks DICOM TLS only (PS3.15 Annex B)",
    )
    dicom_tls_key_file: Path | None = Field(default=None, description="its PEM private key")
    dicom_tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificate(s); when set, a peer must present a certificate "
        "they signed",
    )
    check_called_ae: bool = Field(
        default=True,
        description="refuse an association addressed to a called AE title other than ae_title",
    )
    association_request_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="how long a new connection may stay silent before its A-ASSOCIATE-RQ; "
        "then it is closed",
    )
    sop_classes: list[str] | None = Field(
        default=None,
        description="accepted storage SOP class UIDs; None accepts every storage class",
    )
    transfer_syntaxes: list[str] | None = Field(
        default=None,
        description="accepted transfer syntax UIDs; None accepts every one pynetdicom knows",
    )
    stable_seconds: float = Field(default=60.0, ge=0)
    destinations: list[Destination] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=lambda: list(DEFAULT_ROUTES))
    routing: RoutingMode = Field(
        default=RoutingMode.ALL,
        description="'all': every matching rule applies; 'first-match': the first matching "
        "rule (highest priority, then file order) applies alone",
    )
    workers: int = Field(default=2, ge=0, le=64)
    retry_for_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="how long a failing job keeps retrying, from its first attempt (24 h)",
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="also give up after this many attempts (None: bounded by time only)",
    )
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(
        default=60.0,
        gt=0,
        description="the backoff's cap, at most 60 (larger values are lowered to 60): a "
        "destination that is back gets its exports within it",
    )
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    export_at_once: bool = Field(
        default=True,
        description="a result's DICOM exports are sent at once, by the process's export "
        "lane when it is free or else by the worker that stored it, instead of leaving "
        "them to the next claim (a failed send retries as a job)",
    )
    association_idle_seconds: float | None = Field(
        default=None,
        ge=0,
        description="keep an association to a DICOM destination open this long after a "
        "send for the next one (checked by C-ECHO before reuse); 0: one per send; unset: "
        "5 s in a single gateway process, 0 with a broker (several worker processes, each "
        "of which would hold its own: a PACS taking one association at a time would wait)",
    )

    malloc_trim_seconds: float = Field(
        default=60.0,
        ge=0,
        description="give the memory the allocator keeps after worker threads free it back "
        "to the system (glibc malloc_trim) this often; 0: never; nothing where the C "
        "library has no malloc_trim",
    )
    malloc_arena_max: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="cap glibc's malloc arenas (mallopt M_ARENA_MAX) when `overread serve` or "
        "`overread worker` starts, before its threads do (and in each receiver process); None: the C library's default "
        "(8 per core); a MALLOC_ARENA_MAX environment variable wins",
    )
    explain: bool = False
    trust: bool = Field(
        default=True,
        description="attach the explanation trust score (map concentration, deletion drop) "
        "to every finding decided positive or indeterminate: one extra forward pass per image",
    )
    fsync: bool = True
    triage: dict[str, Any] = Field(
        default_factory=dict,
        description="The [triage] table: worklist score weights and alert channels",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (amqp://...) carrying wake-ups to worker processes"
    )
    fhir_endpoints: list[FhirEndpoint] = Field(
        default_factory=list,
        description="FHIR servers every study's DiagnosticReport bundle is posted to",
    )
    hl7_endpoints: list[Hl7Endpoint] = Field(
        default_factory=list, description="HL7 v2 receivers every result's ORU^R01 is sent to"
    )
    hl7_listen_port: int | None = Field(
        default=None, ge=0, le=65535, description="MLLP port taking ORM^O01/OMI^O23 orders"
    )
    hl7_listen_host: str = "0.0.0.0"
    stow_endpoints: list[StowEndpoint] = Field(
        default_factory=list,
        description="DICOMweb servers every result's DICOM objects are stored on (STOW-RS)",
    )
    model_signing_key_file: Path | None = Field(
        default=None,
        description="file with the HMAC key every model package must be signed with "
        "(default: the OVERREAD_MODEL_SIGNING_KEY environment variable, if set)",
    )
    deid_salt_file: Path | None = Field(
        default=None,
        description="the site's secret for the pseudonyms of destinations that "
        "de-identify (required when one does)",
    )
    cam_segmentation: list[str] = Field(
        default_factory=list,
        description="model aliases whose class activation regions of positive findings are "
        "also sent as a DICOM SEG, labelled as thresholded CAM, not a segmentation model",
    )
    pdf_report: bool = Field(
        default=False,
        description="also send each study's result as a PDF report (DICOM Encapsulated PDF, "
        "modality DOC) with the SR",
    )
    batch_max_size: int = Field(
        default=8, ge=1, le=64, description="micro-batch bound for model calls; 1 disables"
    )
    batch_max_wait_ms: float = Field(
        default=5.0, ge=0, le=60_000, description="longest a model call waits for companions"
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="largest request body of every HTTP route but STOW-RS (JSON, forms); "
        "a larger one is refused with 413 before it is read",
    )
    max_stow_bytes: int = Field(
        default=512 * 1024**2,
        ge=1024,
        description="largest STOW-RS request body; a larger one is refused with 413",
    )
    public_metrics: bool = Field(
        default=False,
        description="serve /metrics without signing in (for a Prometheus on a trusted network)",
    )
    verifying_organization: str | None = Field(
        default=None,
        max_length=64,
        description="Verifying Organization of SRs a reader verified (default: the "
        "study's Institution Name, else the AE title)",
    )
    metrics_scrape_token: SecretStr | None = Field(
        default=None,
        description="a bearer token that lets a scraper read /metrics without an account "
        "(Authorization: Bearer TOKEN); at least 16 characters",
        min_length=16,
    )
    metrics_allowed_addresses: list[str] = Field(
        default_factory=list,
        description="addresses or CIDR networks whose callers read /metrics without "
        "signing in (the scraper's host)",
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="The [service.retention] table: retention periods and disk watermarks",
    )
    monitoring: MonitoringSettings = Field(
        default_factory=MonitoringSettings,
        description="The [service.monitoring] table: the monitoring run, sites and baselines",
    )
    site_calibration: SiteCalibrationSettings = Field(
        default_factory=SiteCalibrationSettings,
        description="The [service.site_calibration] table: which site a study is from, "
        "for the model package's per-site calibration",
    )
    public_api_docs: bool = Field(
        default=False,
        description="serve /docs, /redoc and /openapi.json to anonymous callers "
        "(off: only to signed-in callers)",
    )

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("trusted_proxies", "metrics_allowed_addresses")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        """Normalised (``10.0.0.5/8`` is ``10.0.0.0/8``): the HTTP server matches exactly."""
        networks: list[str] = []
        for entry in value:
            try:
                network = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
                ) from None
            single = network.num_addresses == 1 and "/" not in entry
            networks.append(str(network.network_address) if single else str(network))
        return networks

    @field_validator("model_signing_key_file", "deid_salt_file")
    @classmethod
    def _readable_key_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                key = Path(value).read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"{value}: cannot read it ({exc.strerror or exc})") from None
            if not key:
                raise ValueError(f"{value}: the file is empty")
        return value

    @field_validator("retry_max_seconds")
    @classmethod
    def _cap_the_backoff(cls, value: float) -> float:
        if value > MAX_RETRY_SECONDS:
            logger.warning(
                "retry_max_seconds %g lowered to %g: a destination that is back must get "
                "its exports within a minute",
                value,
                MAX_RETRY_SECONDS,
            )
            return MAX_RETRY_SECONDS
        return value

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> ServiceConfig:
        cert, key, ca = self.dicom_tls_cert_file, self.dicom_tls_key_file, self.dicom_tls_ca_file
        if (cert is None) != (key is None):
            raise ValueError("dicom_tls_cert_file and dicom_tls_key_file go together")
        if ca is not None and cert is None:
            raise ValueError("dicom_tls_ca_file needs dicom_tls_cert_file and dicom_tls_key_file")
        for path in (cert, key, ca):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{path}: no such file")
        return self

    @model_validator(mode="after")
    def _deidentifying_destinations_have_a_salt(self) -> ServiceConfig:
        names = [d.name for d in self.destinations if d.deidentify is not None]
        if names and self.deid_salt_file is None:
            raise ValueError(
                f"destination(s) {', '.join(names)} de-identify: set deid_salt_file "
                "(the site's secret for pseudonyms)"
            )
        return self

    def deid_salt(self) -> str:
        """The de-identification salt, read from ``deid_salt_file`` now."""
        if self.deid_salt_file is None:
            raise ConfigError("deid_salt_file is not set")
        try:
            return Path(self.deid_salt_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.deid_salt_file}: cannot read the salt ({exc})") from None

    @property
    def kept_association_seconds(self) -> float:
        """``association_idle_seconds``, or its default for this deployment."""
        if self.association_idle_seconds is not None:
            return self.association_idle_seconds
        return 0.0 if self.broker_url else 5.0

    @property
    def dicom_tls(self) -> bool:
        """Whether the DICOM port speaks TLS."""
        return self.dicom_tls_cert_file is not None

    @model_validator(mode="after")
    def _routes_reference_known_destinations(self) -> ServiceConfig:
        known = {d.name for d in self.destinations}
        if len(known) != len(self.destinations):
            raise ValueError("destination names must be unique")
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
        fhir = [e.name for e in self.fhir_endpoints]
        if len(set(fhir)) != len(fhir):
            raise ValueError(f"FHIR endpoint names must be unique (got {', '.join(fhir)})")
        hl7 = [e.name for e in self.hl7_endpoints]
        if len(set(hl7)) != len(hl7):
            raise ValueError(f"HL7 endpoint names must be unique (got {', '.join(hl7)})")
        stow = [e.name for e in self.stow_endpoints]
        if len(set(stow)) != len(stow):
            raise ValueError(f"STOW-RS endpoint names must be unique (got {', '.join(stow)})")
        for route in self.routes:
            for dest in route.destinations or []:
                if dest not in known:
                    raise ValueError(
                        f"route {route.name!r} sends to unknown destination {dest!r} "
                        f"(configured: {', '.join(sorted(known)) or 'none'})"
                    )
        return self

    def destination(self, name: str) -> Destination:
        """The destination called ``name``."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise ConfigError(f"unknown destination {name!r}")


def _coerce_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    return list(value)


def service_config(settings: Settings, **overrides: Any) -> ServiceConfig:
    """Build the validated :class:`ServiceConfig` from settings plus overrides.

    ``overrides`` are command-line values; ``None`` means "not given". ``destinations``
    and ``allow_ae`` may be given as strings (``NAME=AE@host:port``, ``AET@host``).

    Raises
    ------
    ConfigError
        If a destination, peer, route or value is invalid; the message names it.
    """
    section: dict[str, Any] = dict(settings.service)
    data: dict[str, Any] = {
        "data_dir": settings.data_dir,
        "database_url": settings.resolved_database_url,
        "ae_title": settings.dicom.ae_title,
        "dicom_port": settings.dicom.port,
        "http_host": settings.http.host,
        "http_port": settings.http.port,
        "trusted_proxies": settings.http.trusted_proxies,
        "stable_seconds": settings.dicom.stable_seconds,
        "allow_ae": settings.dicom.allow_ae,
        "allow_query_ae": settings.dicom.allow_query_ae,
        "triage": settings.triage,
    }
    data.update(section)
    data.update({k: v for k, v in overrides.items() if v is not None and v != []})
    data["destinations"] = [
        d if isinstance(d, Destination) else Destination.parse(d) if isinstance(d, str) else d
        for d in _coerce_list(data.get("destinations"))
    ]
    endpoints = _coerce_list(data.get("fhir_endpoints"))
    data["fhir_endpoints"] = [
        e
        if isinstance(e, FhirEndpoint)
        else FhirEndpoint.parse(e, default_name="fhir" if i == 0 else f"fhir{i + 1}")
        if isinstance(e, str)
        else e
        for i, e in enumerate(endpoints)
    ]
    data["hl7_endpoints"] = [
        Hl7Endpoint.parse(e, default_name="hl7" if i == 0 else f"hl7{i + 1}")
        if isinstance(e, str)
        else e
        for i, e in enumerate(_coerce_list(data.get("hl7_endpoints")))
    ]
    data["stow_endpoints"] = [
        StowEndpoint.parse(e, default_name="stow" if i == 0 else f"stow{i + 1}")
        if isinstance(e, str)
        else e
        for i, e in enumerate(_coerce_list(data.get("stow_endpoints")))
    ]
    data["trusted_proxies"] = _coerce_list(data.get("trusted_proxies"))
    data["allow_ae"] = [
        p if isinstance(p, AllowedPeer) else AllowedPeer.parse(p) if isinstance(p, str) else p
        for p in _coerce_list(data.get("allow_ae"))
    ]
    data["allow_query_ae"] = [
        p if isinstance(p, AllowedPeer) else AllowedPeer.parse(p) if isinstance(p, str) else p
        for p in _coerce_list(data.get("allow_query_ae"))
    ]
    data["query_peers"] = [
        p if isinstance(p, QueryPeer) else QueryPeer.parse(p) if isinstance(p, str) else p
        for p in _coerce_list(data.get("query_peers"))
    ]
    try:
        return ServiceConfig(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        where = ".".join(str(p) for p in loc) or "service"
        if loc and loc[0] == "routes" and len(loc) > 1 and isinstance(loc[1], int):
            raw = data.get("routes") or []
            idx = loc[1]
            rname = (
                raw[idx].get("name", f"#{idx + 1}")
                if idx < len(raw) and isinstance(raw[idx], dict)
                else f"#{idx + 1}"
            )
            where = f"route {rname!r}" + (
                f" field {'.'.join(str(p) for p in loc[2:])}" if len(loc) > 2 else ""
            )
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid service configuration: {where}: {msg}") from None


__all__ = [
    "DEFAULT_ROUTES",
    "AllowedPeer",
    "Destination",
    "FhirEndpoint",
    "Hl7Endpoint",
    "QueryPeer",
    "ReviewTimeout",
    "Route",
    "RoutingMode",
    "ServiceConfig",
    "StowEndpoint",
    "service_config",
]
