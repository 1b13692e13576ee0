"""The demo's accounts: two logins with random passwords, and a token for its own calls."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overread.harness.gateway import Gateway

DEMO_USER = "demo"
ADMIN_USER = "admin"
SERVICE_USER = "demo-service"


@dataclass(frozen=True)
class DemoAccounts:
    """The accounts the demo creates: two logins, and a token for its own HTTP calls."""

    password: str
    admin_password: str
    token: str


def add_demo_accounts(service: Gateway) -> DemoAccounts:
    """Create ``demo`` (radiologist) and ``admin`` with random passwords, and a service token."""
    from overread.security import add_user, create_tables, issue_token

    create_tables(service.database.engine)
    password, admin_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    with service.database.session() as session:
        add_user(session, DEMO_USER, "radiologist", password=password, actor="demo")
        add_user(session, ADMIN_USER, "admin", password=admin_password, actor="demo")
        add_user(session, SERVICE_USER, "service", actor="demo")
        token, _row = issue_token(session, SERVICE_USER, label="overread demo", actor="demo")
    return DemoAccounts(password, admin_password, token)


__all__ = ["ADMIN_USER", "DEMO_USER", "SERVICE_USER", "DemoAccounts", "add_demo_accounts"]
