"""Alert channels against real peers: Mosquitto, an SMTP server, an HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from overread.errors import ServiceError
from overread.netutil import free_port
from overread.service.db import Database
from overread.triage import (
    SIGNATURE_HEADER,
    AlertDelivery,
    ChannelConfig,
    EmailChannel,
    MqttChannel,
    StudyContext,
    WebhookChannel,
    raise_alerts,
    sweep,
    triage_config,
    upsert_study,
    webhook_signature,
)

from .conftest import NOW, F, WebhookReceiver

pytestmark = pytest.mark.service

MESSAGE: dict[str, Any] = {
    "alert_id": 7,
    "study_instance_uid": "1.2.840.1",
    "finding": "Pneumothorax",
    "probability": 0.93,
    "level": 0,
}


def _broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=1):
            return True
    except OSError:
        return False


class Subscriber:
    """A real MQTT subscriber collecting what arrives on a topic."""

    def __init__(self, topic: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.arrived = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, *args: client.subscribe(topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages.append(json.loads(msg.payload))
        self.arrived.set()

    def __enter__(self) -> Subscriber:
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscription not acknowledged by the broker"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mosquitto() -> None:
    if not _broker_up():
        pytest.skip("no MQTT broker on 127.0.0.1:1883")


def test_mqtt_channel_publishes_to_the_topic(mosquitto: None) -> None:
    topic = f"overread/test/{free_port()}"
    channel = MqttChannel(ChannelConfig(name="mqtt", kind="mqtt", topic=topic))
    with Subscriber(topic) as subscriber:
        channel.send(MESSAGE)
        assert subscriber.arrived.wait(10)
    assert subscriber.messages == [MESSAGE]


def test_mqtt_channel_without_broker_raises() -> None:
    port = free_port()
    channel = MqttChannel(ChannelConfig(name="mqtt", kind="mqtt", port=port))
    with pytest.raises(ServiceError, match=f"mqtt mqtt \\(127.0.0.1:{port} .*cannot connect"):
        channel.send(MESSAGE)


class Sink:
    """aiosmtpd handler keeping every message it is given."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_sink() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def test_email_channel_sends_through_smtp(smtp_sink: tuple[Sink, int]) -> None:
    sink, port = smtp_sink
    channel = EmailChannel(
        ChannelConfig(
            name="mail",
            kind="email",
            port=port,
            sender="overread@hospital.example",
            recipients=["a@hospital.example", "b@hospital.example"],
        )
    )
    channel.send({**MESSAGE, "level": 1})
    [envelope] = sink.envelopes
    assert envelope.rcpt_tos == ["a@hospital.example", "b@hospital.example"]
    assert envelope.mail_from == "overread@hospital.example"
    email = message_from_bytes(envelope.content, policy=default_policy)
    assert isinstance(email, EmailMessage)
    assert email["Subject"].strip().startswith("ESCALATED overread critical finding: Pneumothorax")
    assert "1.2.840.1" in email["Subject"]
    body = email.get_content()
    assert '"alert_id": 7' in body


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[Sink, int, Path]]:
    """An SMTP server that requires STARTTLS and then a login (alice / wonderland)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"alice",
            b"wonderland",
        )
        return AuthResult(success=ok)

    sink = Sink()
    port = free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator,
    )
    controller.start()
    yield sink, port, cert
    controller.stop()


def test_email_channel_starttls_and_login(
    tls_smtp: tuple[Sink, int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, port, cert = tls_smtp
    values = {"name": "mail", "kind": "email", "port": port, "recipients": ["r@x"]}
    secure = ChannelConfig(
        **values, starttls=True, ca_file=str(cert), username="alice", password_env="SMTP_PW"
    )
    with pytest.raises(ServiceError, match="no SMTP password"):
        EmailChannel(secure).send(MESSAGE)
    monkeypatch.setenv("SMTP_PW", "wonderland")
    EmailChannel(secure).send(MESSAGE)
    assert len(sink.envelopes) == 1
    # Plain text is refused by this server; a wrong password too.
    with pytest.raises(ServiceError, match="email mail"):
        EmailChannel(ChannelConfig(**values)).send(MESSAGE)
    monkeypatch.setenv("SMTP_PW", "wrong")
    with pytest.raises(ServiceError, match="email mail"):
        EmailChannel(secure).send(MESSAGE)
    # A certificate that does not verify stops the send before any credential goes out.
    monkeypatch.setenv("SMTP_PW", "wonderland")
    unverified = secure.model_copy(update={"ca_file": ""})
    with pytest.raises(ServiceError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        EmailChannel(unverified).send(MESSAGE)
    assert len(sink.envelopes) == 1


def test_email_channel_without_server_raises() -> None:
    port = free_port()
    channel = EmailChannel(ChannelConfig(name="mail", kind="email", port=port, recipients=["x@y"]))
    with pytest.raises(ServiceError, match=f"email mail \\(127.0.0.1:{port}\\)"):
        channel.send(MESSAGE)


def test_webhook_channel_posts_json(webhook: WebhookReceiver) -> None:
    WebhookChannel(ChannelConfig(name="hook", kind="webhook", url=webhook.url)).send(MESSAGE)
    assert webhook.received == [{"path": "/alerts", **MESSAGE}]
    webhook.fail_next = 1
    with pytest.raises(ServiceError, match="HTTP 503"):
        WebhookChannel(ChannelConfig(name="hook", kind="webhook", url=webhook.url)).send(MESSAGE)


def test_webhook_signature_lets_the_receiver_check_the_body(
    webhook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ChannelConfig(name="hook", kind="webhook", url=webhook.url, secret_env="HOOK_SECRET")
    with pytest.raises(ServiceError, match="HOOK_SECRET"):
        WebhookChannel(config).send(MESSAGE)
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    WebhookChannel(config).send(MESSAGE)
    [(headers, body)] = webhook.raw
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert webhook_signature("other", body) != headers[SIGNATURE_HEADER]
    assert json.loads(body) == MESSAGE


def test_sweep_delivers_over_all_three_channels(
    db: Database, webhook: WebhookReceiver, smtp_sink: tuple[Sink, int], mosquitto: None
) -> None:
    sink, port = smtp_sink
    topic = f"overread/test/{free_port()}"
    config = triage_config(
        {
            "alerts": {
                "channels": [
                    {"name": "hook", "kind": "webhook", "url": webhook.url},
                    {"name": "broker", "kind": "mqtt", "topic": topic},
                    {"name": "mail", "kind": "email", "port": port, "recipients": ["r@x"]},
                ]
            }
        }
    )
    with db.session() as session:
        item = upsert_study(
            session, "9.1", [F("Pneumothorax", 0.97, True)], StudyContext("ICU"), config, now=NOW
        )
        [alert] = raise_alerts(session, item, config, now=NOW)
    with Subscriber(topic) as subscriber, db.session() as session:
        report = sweep(session, config, now=NOW)
        assert subscriber.arrived.wait(10)
    assert len(report.sent) == 3, report.errors
    assert webhook.received[0]["alert_id"] == alert.id
    assert subscriber.messages[0]["alert_id"] == alert.id
    assert len(sink.envelopes) == 1
    with db.session() as session:
        states = session.execute(select(AlertDelivery.channel, AlertDelivery.state)).all()
    assert sorted(states) == [("broker", "sent"), ("hook", "sent"), ("mail", "sent")]
