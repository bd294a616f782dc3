"""Webhooks: signed completion and failure notifications, delivered with retries, never to a
private address.

What a receiver gets, one POST per attempt:
- body: the payload as JSON (UTF-8), the same bytes on every attempt;
- `T2V-Event`: `video.completed` or `video.failed`;
- `T2V-Webhook-Id`: the delivery's id, the same on every attempt (receivers dedupe on it);
- `T2V-Signature: t=<unix seconds>,v1=<hex>`: HMAC-SHA256 with the shared secret over
  `f"{t}."` + body, made afresh per attempt. `verify()` is the receiver's side: constant-time
  compare, and timestamps older (or newer) than a tolerance are rejected against replays.

SSRF: `check_url` allows http/https only and refuses a host if ANY address it resolves to is
loopback, link-local, private, unspecified, multicast or reserved, including IPv4 addresses
embedded in IPv6 ones (mapped, 6to4, Teredo). The API checks at submit; `deliver` resolves and
checks again before each attempt and connects to the address it checked (DNS may change
between the two, or between the check and a second lookup). Redirects are not followed and no
proxy is used. `allow_private=True` turns the address check off (local testing only).

`deliver` retries connection errors, timeouts, 5xx and 429 (honouring Retry-After up to a cap)
with backoff; other 4xx and 3xx are final. Every attempt, including a refusal, is recorded
through the caller's `record` callable; it returns whether the receiver took the delivery.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

EVENTS = ("video.completed", "video.failed")
SIGNATURE_HEADER = "T2V-Signature"
ID_HEADER = "T2V-Webhook-Id"
EVENT_HEADER = "T2V-Event"
USER_AGENT = "t2vserve-webhooks/1"
MAX_RESPONSE_BYTES = 64 * 1024  # receivers answer 2xx; their body is not read beyond this

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(ValueError):
    """The URL may not receive webhooks; the message says why."""


# --- signing ---------------------------------------------------------------------------


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 of `f"{timestamp}."` + body."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(body: bytes, secret: bytes, timestamp: int) -> str:
    return f"t={timestamp},v1={sign(body, secret, timestamp)}"


def verify(
    body: bytes, header: str, secret: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Whether `header` (a T2V-Signature value) signs `body` with `secret` at a timestamp within
    `tolerance_s` of `now`. Several v1= values are allowed (secret rotation): any may match."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(body, secret, timestamp)
    # compare every candidate, so the time taken does not say which one matched
    return any([hmac.compare_digest(expected, c) for c in candidates])


# --- the SSRF check --------------------------------------------------------------------


def _refusal(ip: IPAddress) -> str | None:
    """Why `ip` may not receive webhooks, or None if it may."""
    embedded: list[ipaddress.IPv4Address] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour:
            embedded.append(ip.sixtofour)
        if ip.teredo:
            embedded.extend(ip.teredo)
    for inner in embedded:
        if reason := _refusal(inner):
            return f"{reason} (embedded in {ip})"
    for kind, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-global", not ip.is_global),  # shared 100.64/10, documentation ranges, ...
    ):
        if hit:
            return f"{ip} is a {kind} address"
    return None


def _split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an acceptable URL, else WebhookRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise WebhookRefused(f"webhook URL {url!r} is malformed: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook URL {url!r}: only http and https are allowed")
    if not parts.hostname:
        raise WebhookRefused(f"webhook URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused(f"webhook URL {url!r}: credentials in the URL are not supported")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` stands for; a literal needs no DNS. socket.gaierror if none."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # strip an IPv6 scope (fe80::1%eth0) before parsing; fe80::/10 is refused anyway
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def _checked_addresses(url: str, host: str, port: int, allow_private: bool) -> list[IPAddress]:
    addresses = _resolve(host, port)
    if not allow_private:
        for ip in addresses:
            if reason := _refusal(ip):
                raise WebhookRefused(
                    f"webhook URL {url!r} resolves to {reason}; webhooks to loopback, "
                    "link-local, private or reserved addresses are refused"
                )
    return addresses


def check_url(url: str, allow_private: bool = False) -> None:
    """Raise WebhookRefused unless `url` may receive webhooks (see the module docstring).
    Resolves the host; a host that does not resolve is refused too."""
    _, host, port, _ = _split(url)
    try:
        _checked_addresses(url, host, port, allow_private)
    except socket.gaierror as e:
        raise WebhookRefused(f"webhook URL {url!r}: host {host!r} does not resolve ({e})") from None


# --- delivery --------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand, whatever DNS says now; Host stays the URL's."""

    def __init__(self, host: str, port: int, ip: IPAddress, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self._ip), self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above, with TLS verified against the URL's host name (SNI and certificate)."""

    def __init__(self, host: str, port: int, ip: IPAddress, timeout: float):
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((str(self._ip), self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def _retry_after(value: str | None, cap_s: float) -> float:
    """Seconds a Retry-After header asks for (delta seconds or an HTTP date), at most cap_s."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), cap_s)


def _post_once(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float, allow_private: bool
) -> tuple[int, str | None]:
    """One POST to an address checked just now: (status, Retry-After header). Raises
    WebhookRefused, socket.gaierror, OSError or http.client.HTTPException."""
    scheme, host, port, target = _split(url)
    addresses = _checked_addresses(url, host, port, allow_private)
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    last: OSError | None = None
    for ip in addresses:  # like socket.create_connection: the first address that connects
        conn = cls(host, port, ip, timeout_s)
        try:
            try:
                conn.connect()
            except OSError as e:
                last = e
                continue
            conn.request("POST", target, body=body, headers=headers)
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            return response.status, response.headers.get("Retry-After")
        finally:
            conn.close()
    assert last is not None
    raise last


def deliver(
    url: str,
    event: str,
    payload: dict[str, Any],
    secret: bytes,
    *,
    delivery_id: str | None = None,
    attempts: int = 5,
    backoff_s: Sequence[float] = (1, 2, 4, 8, 16),
    timeout_s: float = 10,
    retry_after_cap_s: float = 60,
    allow_private: bool = False,
    record: Callable[[dict[str, Any]], Any] | None = None,
) -> bool:
    """POST `payload` as `event` to `url`, signed with `secret`; True once a 2xx came back.

    `delivery_id` goes out as T2V-Webhook-Id on every attempt; pass a stable one (e.g.
    f"{job_id}.{event}") so a delivery redone after a worker crash dedupes at the receiver.
    The wait before attempt n+1 is backoff_s[n-1] (the last value repeats), or what a 429/5xx's
    Retry-After asks if longer, up to retry_after_cap_s. `record` gets one dict per attempt:
    attempt, at (ISO 8601 UTC), status (HTTP status or None), error (str or None), duration_ms.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; one of {EVENTS}")
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    delivery_id = delivery_id or f"whd_{uuid.uuid4().hex}"
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    for n in range(1, attempts + 1):
        started = time.monotonic()
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        status: int | None = None
        error: str | None = None
        retry, wait = True, 0.0
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: event,
            ID_HEADER: delivery_id,
            SIGNATURE_HEADER: signature_header(body, secret, int(time.time())),
        }
        try:
            status, retry_after = _post_once(url, body, headers, timeout_s, allow_private)
        except WebhookRefused as e:
            error, retry = f"refused: {e}", False
        except socket.gaierror as e:  # DNS trouble may pass
            error = f"host does not resolve: {e}"
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, TLS, garbage
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if status is not None:
            if 200 <= status < 300:
                retry = False
            elif status == 429 or status >= 500:
                wait = _retry_after(retry_after, retry_after_cap_s)
                error = f"HTTP {status}"
            else:  # other 4xx, and 3xx: redirects are not followed
                error, retry = f"HTTP {status}", False
        if record is not None:
            record(
                {
                    "attempt": n,
                    "at": at,
                    "status": status,
                    "error": error,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                }
            )
        if status is not None and 200 <= status < 300:
            return True
        if not retry or n == attempts:
            return False
        time.sleep(max(backoff_s[min(n - 1, len(backoff_s) - 1)] if backoff_s else 0, wait))
    return False
