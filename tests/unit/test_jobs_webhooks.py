"""Webhooks against a real HTTP receiver on loopback (so allow_private=True there), the SSRF
check on literals and loopback names (no DNS: this machine has no internet), and a listening
socket that must see no connection for a refused URL."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from t2vserve.jobs.webhooks import (
    WebhookRefused,
    check_url,
    deliver,
    sign,
    signature_header,
    verify,
)

SECRET = b"whsec_test"
PAYLOAD = {"id": "video_123", "object": "video", "status": "completed", "seconds": 3}
FAST = {"backoff_s": (0.05,), "allow_private": True}


@dataclass
class Receiver:
    url: str
    # what to answer, in order: (status, extra headers, seconds to wait first); then 200
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out and left
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.requests.append((dict(self.headers), body))
            status, headers, delay = rec.script.pop(0) if rec.script else (200, {}, 0.0)
            time.sleep(delay)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/t2v?src=test"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A listening loopback socket; a test asserts nothing ever connected to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.3)
    yield sock
    sock.close()


def assert_no_connection(sock: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        sock.accept()[0].close()


def test_sign_and_verify():
    body = b'{"id":"video_1"}'
    ts = 1_780_000_000
    header = signature_header(body, SECRET, ts)
    assert header == f"t={ts},v1={sign(body, SECRET, ts)}"
    assert len(sign(body, SECRET, ts)) == 64 and sign(body, SECRET, ts) != sign(body, SECRET, ts + 1)
    assert verify(body, header, SECRET, now=ts)
    assert verify(body, header, SECRET, now=ts + 300)
    assert not verify(body, header, SECRET, now=ts + 301)  # stale: a replay
    assert not verify(body, header, SECRET, now=ts - 301)
    assert verify(body, header, SECRET, tolerance_s=600, now=ts + 500)
    assert not verify(body, header, b"another secret", now=ts)
    assert not verify(body + b" ", header, SECRET, now=ts)
    # the timestamp is signed: moving it breaks the signature
    assert not verify(body, header.replace(f"t={ts}", f"t={ts + 1}"), SECRET, now=ts)
    # secret rotation: any v1 may match
    assert verify(body, f"t={ts},v1={'0' * 64},v1={sign(body, SECRET, ts)}", SECRET, now=ts)
    for bad in ("", f"t={ts}", f"v1={sign(body, SECRET, ts)}", f"t=soon,v1={'0' * 64}", "garbage"):
        assert not verify(body, bad, SECRET, now=ts)


def test_delivery_is_signed_and_verified_by_the_receiver(receiver):
    attempts: list[dict] = []
    ok = deliver(
        receiver.url, "video.completed", PAYLOAD, SECRET,
        delivery_id="video_123.video.completed", record=attempts.append, **FAST,
    )
    assert ok
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert json.loads(body) == PAYLOAD
    assert headers["Content-Type"] == "application/json"
    assert headers["T2V-Event"] == "video.completed"
    assert headers["T2V-Webhook-Id"] == "video_123.video.completed"
    assert verify(body, headers["T2V-Signature"], SECRET)
    assert not verify(body, headers["T2V-Signature"], b"wrong")
    [a] = attempts
    assert (a["attempt"], a["status"], a["error"]) == (1, 200, None)
    assert a["at"].endswith("+00:00") and a["duration_ms"] >= 0


def test_receiver_failing_three_times_gets_it_on_attempt_four(receiver):
    receiver.script = [(500, {}, 0.0)] * 3
    attempts: list[dict] = []
    assert deliver(receiver.url, "video.failed", PAYLOAD, SECRET, record=attempts.append, **FAST)
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert [a["status"] for a in attempts] == [500, 500, 500, 200]
    assert [a["error"] for a in attempts] == ["HTTP 500"] * 3 + [None]
    assert len(receiver.requests) == 4
    # one delivery: same id and body every time, each attempt signed
    assert len({h["T2V-Webhook-Id"] for h, _ in receiver.requests}) == 1
    assert len({b for _, b in receiver.requests}) == 1
    assert all(verify(b, h["T2V-Signature"], SECRET) for h, b in receiver.requests)


def test_gives_up_after_the_last_attempt(receiver):
    receiver.script = [(503, {}, 0.0)] * 5
    attempts: list[dict] = []
    ok = deliver(receiver.url, "video.failed", PAYLOAD, SECRET, attempts=3, record=attempts.append, **FAST)
    assert not ok
    assert [a["status"] for a in attempts] == [503, 503, 503]
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_4xx_is_not_retried(receiver, status):
    receiver.script = [(status, {}, 0.0)]
    attempts: list[dict] = []
    assert not deliver(receiver.url, "video.completed", PAYLOAD, SECRET, record=attempts.append, **FAST)
    assert [(a["status"], a["error"]) for a in attempts] == [(status, f"HTTP {status}")]
    assert len(receiver.requests) == 1


def test_redirect_is_not_followed(receiver, silent_listener):
    port = silent_listener.getsockname()[1]
    receiver.script = [(307, {"Location": f"http://127.0.0.1:{port}/"}, 0.0)]
    attempts: list[dict] = []
    assert not deliver(receiver.url, "video.completed", PAYLOAD, SECRET, record=attempts.append, **FAST)
    assert [a["status"] for a in attempts] == [307]
    assert_no_connection(silent_listener)


def test_429_honours_retry_after_up_to_the_cap(receiver):
    receiver.script = [(429, {"Retry-After": "30"}, 0.0)]
    attempts: list[dict] = []
    start = time.monotonic()
    ok = deliver(
        receiver.url, "video.completed", PAYLOAD, SECRET,
        retry_after_cap_s=0.4, record=attempts.append, **FAST,
    )
    waited = time.monotonic() - start
    assert ok and [a["status"] for a in attempts] == [429, 200]
    assert 0.4 <= waited < 5  # the capped Retry-After, not the 0.05 s backoff, not 30 s


def test_timeout_is_retried(receiver):
    receiver.script = [(200, {}, 1.0)]  # answers, but too late
    attempts: list[dict] = []
    ok = deliver(
        receiver.url, "video.completed", PAYLOAD, SECRET,
        timeout_s=0.2, record=attempts.append, **FAST,
    )
    assert ok
    assert attempts[0]["status"] is None and "timed out" in attempts[0]["error"]
    assert attempts[1]["status"] == 200


def test_connection_refused_is_retried():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    attempts: list[dict] = []
    ok = deliver(
        f"http://127.0.0.1:{port}/", "video.failed", PAYLOAD, SECRET,
        attempts=3, record=attempts.append, **FAST,
    )
    assert not ok
    assert [a["status"] for a in attempts] == [None] * 3
    assert all("ConnectionRefused" in a["error"] for a in attempts)


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[::1]/", "loopback"),
        ("http://[fc00::1]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://100.64.0.1/", "non-global"),
        ("http://[::ffff:127.0.0.1]/", "embedded in ::ffff:7f00:1"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[2002:a00:1::]/", "embedded in 2002:a00:1::"),  # 6to4 of 10.0.0.1
        ("http://localhost/", "loopback"),  # a name: checked by what it resolves to
        ("http://2130706433/", "127.0.0.1 is a loopback"),  # 127.0.0.1 in decimal
        ("ftp://x/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("http:///hook", "no host"),
        ("https://user:pw@93.184.216.34/", "credentials"),
        ("http://93.184.216.34:99999/", "malformed"),
    ],
)
def test_check_url_refuses(url, says):
    with pytest.raises(WebhookRefused) as e:
        check_url(url)
    assert says in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/",
        "http://93.184.216.34:8080/hooks?x=1",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
    ],
)
def test_check_url_accepts_public_addresses(url):
    check_url(url)


def test_allow_private_lifts_only_the_address_check():
    check_url("http://127.0.0.1:8080/", allow_private=True)
    check_url("http://10.0.0.1/", allow_private=True)
    check_url("http://localhost/", allow_private=True)
    with pytest.raises(WebhookRefused, match="only http and https"):
        check_url("ftp://127.0.0.1/", allow_private=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_deliver_to_a_refused_url_makes_no_connection(silent_listener, host):
    port = silent_listener.getsockname()[1]
    attempts: list[dict] = []
    ok = deliver(
        f"http://{host}:{port}/hook", "video.completed", PAYLOAD, SECRET,
        backoff_s=(0.01,), record=attempts.append,
    )
    assert not ok
    [a] = attempts  # refused once, not retried
    assert a["status"] is None and a["error"].startswith("refused:") and "loopback" in a["error"]
    assert_no_connection(silent_listener)


def test_deliver_refuses_unknown_events(receiver):
    with pytest.raises(ValueError, match="unknown webhook event"):
        deliver(receiver.url, "video.exploded", PAYLOAD, SECRET, **FAST)
    assert receiver.requests == []
