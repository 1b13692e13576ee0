"""What every web route needs: the running service, the database and access control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from overread.security.access import AccessControl
from overread.security.web_sessions import SessionSigner, load_session_key

if TYPE_CHECKING:
    from overread.service.db import Database
    from overread.service.server import Service


@dataclass
class WebContext:
    """The shared state of the REST API and the web UI.

    Attributes
    ----------
    service
        The running gateway (config, database, queue, ingestor, models).
    access
        Authentication and permission checks (``access.require(Permission.X)``),
        login/logout and audit of views.
    """

    service: Service
    access: AccessControl

    @property
    def database(self) -> Database:
        """The gateway's database (``with ctx.database.session() as s: ...`` commits)."""
        return self.service.database

    @classmethod
    def for_service(cls, service: Service) -> WebContext:
        """The context of ``service``: session cookies signed with the data dir's key."""
        from pathlib import Path

        signer = SessionSigner(load_session_key(Path(service.config.data_dir)))
        return cls(service=service, access=AccessControl(service.database.session, signer))


__all__ = ["WebContext"]
