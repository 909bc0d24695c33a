"""Telling people about devices: a pluggable notifier, by e-mail (SMTP) or webhook (HTTP POST).

The id service calls :meth:`Notifier.notify` when a new device is quarantined (the user learns
why their phone does not sync and how to approve it) and may call it for other device events.
A notifier never raises: a mail server that is down must not turn a sign-in into an error; the
failure is logged and the call returns False.

Both notifiers are blocking (the id service calls them from its worker thread).
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Protocol

log = logging.getLogger("ucgate.id.notify")


@dataclass(frozen=True)
class DeviceNotice:
    """One thing to tell: ``event`` is ``device-quarantined`` (or ``device-blocked``, ...)."""

    event: str
    user: str
    device_id: str
    partnership_id: int | None
    reason: str
    device_type: str | None = None
    model: str | None = None
    user_agent: str | None = None
    client_kind: str | None = None
    service: str | None = None
    client_address: str | None = None


class Notifier(Protocol):
    def notify(self, notice: DeviceNotice) -> bool:
        """Deliver ``notice``; True on success. Never raises."""
        ...


class NullNotifier:
    def notify(self, notice: DeviceNotice) -> bool:
        return True


class MultiNotifier:
    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = list(notifiers)

    def notify(self, notice: DeviceNotice) -> bool:
        return all([n.notify(notice) for n in self.notifiers])


_SUBJECTS = {
    "device-quarantined": "Your device is waiting for approval",
    "device-blocked": "Your device has been blocked",
}


def render_text(notice: DeviceNotice) -> tuple[str, str]:
    """(subject, body) of a notice, in plain words."""
    what = " ".join(x for x in (notice.model, notice.device_type) if x) or "a device"
    subject = _SUBJECTS.get(notice.event, f"Device notice: {notice.event}")
    lines = [
        f"A sign-in for {notice.user} came from {what} (device id {notice.device_id}).",
        "",
    ]
    if notice.event == "device-quarantined":
        lines += [
            "It is quarantined: it cannot sync until it is approved, by an administrator",
            "or by you in the self-service portal with your second factor.",
            "If this was not you, tell your administrator and change your app passwords.",
        ]
    else:
        lines += [f"Reason: {notice.reason}."]
    if notice.user_agent:
        lines += ["", f"Client: {notice.user_agent}"]
    if notice.client_address:
        lines += [f"From address: {notice.client_address}"]
    return subject, "\n".join(lines) + "\n"


class SmtpNotifier:
    """E-mail through an SMTP relay (smtplib).

    Args:
        host, port: the relay.
        sender: the From address.
        recipients: user -> addresses (e.g. the user's UPN, plus a helpdesk copy).
        starttls: upgrade the connection with STARTTLS (verified against ``ssl_context``).
        username, password: SMTP AUTH, only over STARTTLS.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: Callable[[str], Sequence[str]],
        *,
        starttls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if username and not starttls:
            raise ValueError("SMTP AUTH needs starttls = true (the password crosses this link)")
        self.host, self.port, self.sender = host, port, sender
        self.recipients = recipients
        self.starttls, self.ssl_context = starttls, ssl_context
        self.username, self.password, self.timeout = username, password, timeout

    def notify(self, notice: DeviceNotice) -> bool:
        try:
            to = [a for a in self.recipients(notice.user) if a]
        except Exception:
            log.exception("no recipients for %s", notice.user)
            return False
        if not to:
            log.warning("no e-mail address for %s: %s not sent", notice.user, notice.event)
            return False
        subject, body = render_text(notice)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.sender, ", ".join(to), subject
        msg["X-Ucgate-Event"] = notice.event
        msg.set_content(body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=self.ssl_context or ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(msg)
            return True
        except (OSError, smtplib.SMTPException) as e:
            log.error("SMTP %s:%d: %s not sent to %s: %s", self.host, self.port, notice.event, notice.user, e)
            return False


class WebhookNotifier:
    """``POST`` the notice as JSON to a URL (httpx), e.g. a chat or ticketing integration.

    Args:
        url: http(s) URL.
        headers: extra headers (e.g. an Authorization the receiver wants).
        verify: TLS verification (True, or a CA bundle path).
    """

    def __init__(
        self, url: str, *, headers: dict[str, str] | None = None, verify: bool | str = True, timeout: float = 10.0
    ) -> None:
        self.url, self.headers, self.verify, self.timeout = url, dict(headers or {}), verify, timeout

    def notify(self, notice: DeviceNotice) -> bool:
        import httpx

        subject, text = render_text(notice)
        payload = {**asdict(notice), "subject": subject, "text": text}
        try:
            with httpx.Client(verify=self.verify, timeout=self.timeout, trust_env=False) as c:
                r = c.post(
                    self.url,
                    content=json.dumps(payload).encode(),
                    headers={"Content-Type": "application/json", **self.headers},
                )
            if r.status_code >= 300:
                log.error("webhook %s answered %d for %s", self.url, r.status_code, notice.event)
                return False
            return True
        except httpx.HTTPError as e:
            log.error("webhook %s: %s not sent: %s", self.url, notice.event, e)
            return False
