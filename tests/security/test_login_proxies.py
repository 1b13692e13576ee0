"""Login throttling behind a shared address, against a running gateway's HTTP server.

The gateway trusts one reverse proxy, 127.0.0.2 (any 127/8 address is this host's
loopback): its requests name the client in X-Forwarded-For. Requests from
127.0.0.1 are from an untrusted peer, whose X-Forwarded-For is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from overread.audit import iter_records
from overread.config import Settings
from overread.gateway import Gateway
from overread.harness.gateway import QUICK_TIMINGS, loopback_config, running_gateway
from overread.security import add_user

PASSWORD = "correct horse battery"
PROXY = "127.0.0.2"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir: Path = tmp_path_factory.mktemp("throttle")
    config = loopback_config(
        Settings(data_dir=data_dir),
        **{**QUICK_TIMINGS, "workers": 0},
        http_host="127.0.0.1",
        http_port=0,
        trusted_proxies=[PROXY],
        login_lockout_seconds=600,  # lockouts outlast the test; budgets stay the defaults
    )
    with running_gateway(config, stop_timeout=10, artifacts=False) as service:
        with service.database.session() as session:
            for name in ("alice", "bob", "carol", "dave"):
                add_user(session, name, "radiologist", password=PASSWORD, actor="os:test")
        yield service


def _client(gateway: Gateway, local_address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=local_address)
    return httpx.Client(base_url=f"http://127.0.0.1:{gateway.http_port}", transport=transport)


def _login(client: httpx.Client, name: str, password: str, forwarded_for: str = "") -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = {"username": name, "password": password}
    return client.post("/api/auth/login", json=body, headers=headers).status_code


def _sources(gateway: Gateway, name: str) -> list[str]:
    with gateway.database.session() as session:
        return [
            str(r.details.get("source"))
            for r in iter_records(session)
            if r.actor == name and r.action in ("login-success", "login-failure")
        ]


def test_an_attacker_behind_the_proxy_does_not_lock_out_other_users(gateway: Gateway) -> None:
    with _client(gateway, PROXY) as proxy:
        # An attacker at 10.0.0.5 guesses alice's password past her budget (5) ...
        codes = [_login(proxy, "alice", f"guess-{n}", "10.0.0.5") for n in range(6)]
        assert codes == [401] * 5 + [429]
        # ... and sprays 50 other names, past the address's budget.
        assert {_login(proxy, f"user{n}", "Winter2026!", "10.0.0.5") for n in range(50)} == {401}
        assert _login(proxy, "user0", "Winter2026!", "10.0.0.5") == 429  # refused there
        assert _login(proxy, "user0", "Winter2026!", "10.0.0.6") == 401  # not elsewhere
        # Alice herself is locked out, from every address: her budget is spent.
        assert _login(proxy, "alice", PASSWORD, "10.0.0.5") == 429
        assert _login(proxy, "alice", PASSWORD, "192.0.2.44") == 429
        # Bob, behind the same NAT (10.0.0.5), logs in to his own account.
        assert _login(proxy, "bob", PASSWORD, "10.0.0.5") == 200
        # The proxy's own hops are skipped: the client is the last untrusted one.
        assert _login(proxy, "dave", PASSWORD, f"203.0.113.9, 10.0.0.7, {PROXY}") == 200
    assert _sources(gateway, "bob") == ["10.0.0.5"]
    assert _sources(gateway, "alice")[:6] == ["10.0.0.5"] * 6
    assert gateway.config.login_account_budget == 5  # the defaults the test exercises
    assert gateway.config.login_address_budget == 50
    assert _sources(gateway, "dave") == ["10.0.0.7"]


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(gateway: Gateway) -> None:
    with _client(gateway, "127.0.0.1") as direct:
        # A caller rotating forged addresses still spends carol's budget ...
        codes = [_login(direct, "carol", f"guess-{n}", f"198.51.100.{n}") for n in range(6)]
        assert codes == [401] * 5 + [429]
        # ... and every attempt is recorded, and throttled, as from its real address.
        assert _login(direct, "nobody", "guess", "10.0.0.5") == 401
    assert _sources(gateway, "carol") == ["127.0.0.1"] * 6
    assert _sources(gateway, "nobody") == ["127.0.0.1"]
