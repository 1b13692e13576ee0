"""Alert channels: a JSON webhook, an MQTT topic, and e-mail over SMTP.

Each channel turns one alert message (a JSON-able dict) into one delivery attempt
and raises :class:`~overread.errors.ServiceError` naming the channel and the cause
when the peer does not take it; retrying with backoff is the caller's business
(:mod:`overread.triage.alerts`), so a channel stays a small, testable adapter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any, Protocol

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from overread.errors import ServiceError
from overread.triage.config import ChannelConfig


class AlertChannel(Protocol):
    """Something that delivers an alert message or raises ``ServiceError``."""

    name: str

    def send(self, message: dict[str, Any]) -> None:
        """Deliver one message."""


class WebhookChannel:
    """POST the message as JSON; any 2xx status is delivery.

    With ``secret_env`` set, the body is signed with HMAC-SHA256 under the secret in
    that environment variable (``X-Overread-Signature: sha256=<hex>``), so a receiver
    can tell a real alert from a forged one; see :func:`webhook_signature`.
    """

    def __init__(self, config: ChannelConfig) -> None:
        self.name = config.name
        self.url = config.url
        self.timeout = config.timeout_seconds
        self.secret_env = config.secret_env

    def send(self, message: dict[str, Any]) -> None:
        """POST ``message``; raise ``ServiceError`` on a connection error or non-2xx."""
        body = json.dumps(message, sort_keys=True, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.secret_env:
            secret = os.environ.get(self.secret_env)
            if not secret:
                raise ServiceError(
                    f"webhook {self.name}: environment variable {self.secret_env} "
                    "(the signing secret) is not set"
                )
            headers[SIGNATURE_HEADER] = webhook_signature(secret, body)
        try:
            response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise ServiceError(f"webhook {self.name} ({self.url}): {exc}") from None
        if not response.is_success:
            raise ServiceError(f"webhook {self.name} ({self.url}): HTTP {response.status_code}")


#: The header carrying a webhook body's signature.
SIGNATURE_HEADER = "X-Overread-Signature"


def webhook_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of body under secret>``: what a receiver recomputes."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class MqttChannel:
    """Publish the message as JSON to a topic and wait for the broker's acknowledgement.

    QoS 1 (the default) means the broker has the message when ``send`` returns.
    """

    def __init__(self, config: ChannelConfig) -> None:
        self.name = config.name
        self.host = config.host
        self.port = config.port
        self.topic = config.topic
        self.qos = config.qos
        self.timeout = config.timeout_seconds

    def send(self, message: dict[str, Any]) -> None:
        """Publish ``message``; raise ``ServiceError`` if the broker does not take it."""
        where = f"mqtt {self.name} ({self.host}:{self.port} {self.topic})"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="")
        try:
            client.connect(self.host, self.port, keepalive=max(int(self.timeout), 5))
        except OSError as exc:
            raise ServiceError(f"{where}: cannot connect: {exc}") from None
        client.loop_start()
        try:
            info = client.publish(self.topic, json.dumps(message, sort_keys=True), qos=self.qos)
            info.wait_for_publish(timeout=self.timeout)
            if not info.is_published():
                raise ServiceError(f"{where}: not acknowledged within {self.timeout:g} s")
        except (ValueError, RuntimeError) as exc:
            raise ServiceError(f"{where}: {exc}") from None
        finally:
            client.disconnect()
            client.loop_stop()


class EmailChannel:
    """Send a plain-text e-mail with the message as JSON, over SMTP.

    ``starttls`` upgrades the connection (certificate verified against ``ca_file`` or
    the system's CAs) before ``username`` logs in with the password from the
    environment variable ``password_env``: credentials never sit in the config file.
    """

    def __init__(self, config: ChannelConfig) -> None:
        self.name = config.name
        self.host = config.host
        self.port = config.port
        self.sender = config.sender
        self.recipients = list(config.recipients)
        self.timeout = config.timeout_seconds
        self.starttls = config.starttls
        self.ca_file = config.ca_file
        self.username = config.username
        self.password_env = config.password_env

    def compose(self, message: dict[str, Any]) -> EmailMessage:
        """The e-mail for one alert message."""
        email = EmailMessage()
        level = int(message.get("level", 0))
        prefix = "ESCALATED " if level > 0 else ""
        email["From"] = self.sender
        email["To"] = ", ".join(self.recipients)
        body = json.dumps(message, indent=2, sort_keys=True) + "\n"
        if message.get("source") == "monitoring":
            # Not a patient's finding: its own subject line, no study, no probability.
            email["Subject"] = (
                f"{prefix}overread monitoring: {message.get('kind')} ({message.get('subject')})"
            )
            email.set_content(f"{message.get('message')}\n\n{message.get('notice')}\n\n{body}")
            return email
        email["Subject"] = (
            f"{prefix}overread critical finding: {message.get('finding')} "
            f"(p={float(message.get('probability', 0.0)):.2f}) "
            f"study {message.get('study_instance_uid')}"
        )
        email.set_content(
            "A critical finding was flagged by the AI second reader and awaits "
            "acknowledgement.\n\n" + body
        )
        return email

    def send(self, message: dict[str, Any]) -> None:
        """Send ``message``; raise ``ServiceError`` if the server refuses it."""
        where = f"email {self.name} ({self.host}:{self.port})"
        password = ""
        if self.username:
            password = os.environ.get(self.password_env, "") if self.password_env else ""
            if not password:
                raise ServiceError(
                    f"{where}: no SMTP password: set the environment variable named by password_env"
                )
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    context = ssl.create_default_context(cafile=self.ca_file or None)
                    smtp.starttls(context=context)
                if self.username:
                    smtp.login(self.username, password)
                smtp.send_message(self.compose(message))
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            raise ServiceError(f"{where}: {exc}") from None


def open_channel(config: ChannelConfig) -> AlertChannel:
    """The channel a :class:`ChannelConfig` describes."""
    if config.kind == "webhook":
        return WebhookChannel(config)
    if config.kind == "mqtt":
        return MqttChannel(config)
    return EmailChannel(config)


__all__ = [
    "SIGNATURE_HEADER",
    "AlertChannel",
    "EmailChannel",
    "MqttChannel",
    "WebhookChannel",
    "open_channel",
    "webhook_signature",
]
