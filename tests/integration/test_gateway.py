"""The HTTP gateway against a real tritonserver: bad input is a 4xx JSON error, never a 5xx."""

import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from t2vserve.client.gateway import FIELDS, INT64_MAX, INT64_MIN, json_errors

from .conftest import free_ports

CHEAP = {"width": 64, "height": 64, "num_frames": 5, "steps": 1}


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    port = free_ports(1)[0]
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "t2vserve.cli", "gateway", "--url",
                                 server.grpc_url, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a loaded 2-core machine takes a while to import
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"gateway did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def _call(url, body=None, *, path="/t2v/generate", method="POST",
          content_type="application/json"):
    """(status, headers, bytes); a dict or list body is sent as JSON (NaN as a literal)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if data is not None else {}
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            status, headers, data = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, data = e.code, e.headers, e.read()
    assert headers["X-Request-Id"].startswith("req_")
    return status, headers, data


def _error(status, headers, data) -> dict:
    """The error object of a JSON error answer, its shape checked."""
    assert 400 <= status < 600 and headers["Content-Type"].startswith("application/json")
    err = json.loads(data)["error"]
    assert set(err) == {"code", "message", "param", "request_id"}
    assert err["code"] and err["message"] and err["request_id"] == headers["X-Request-Id"]
    return err


def _video(status, headers, data) -> None:
    assert status == 200, data[:500]
    assert headers["Content-Type"] == "video/mp4" and data[4:8] == b"ftyp"


@pytest.mark.parametrize("seed", [10**23, 99999999999999999999999, -(2**63) - 1, 2**63])
def test_a_seed_beyond_int64_is_a_400_naming_the_range(gateway, seed):
    status, headers, data = _call(gateway, {"prompt": "a red cup", "seed": seed, **CHEAP})
    err = _error(status, headers, data)
    assert status == 400 and err["code"] == "out_of_range" and err["param"] == "seed"
    assert "seed must be an INT64, in [-9223372036854775808, 9223372036854775807]" in err["message"]


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63)])
def test_the_int64_extremes_are_served(gateway, seed):
    _video(*_call(gateway, {"prompt": "a red cup", "seed": seed, **CHEAP}))


@pytest.mark.parametrize("name", ["guidance_scale", "duration", "timeout"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(gateway, name, literal):
    body = f'{{"prompt": "a cup", "fps": 8, "{name}": {literal}}}'.encode()
    err = _error(*_call(gateway, body))
    assert err["code"] == "out_of_range" and err["param"] == name
    assert "finite" in err["message"]


@pytest.mark.parametrize("name", ["prompt", "negative_prompt", "width", "seed", "guidance_scale"])
@pytest.mark.parametrize("value", [{"a": 1}, [64], [], {}, None, True])
def test_objects_lists_null_and_booleans_are_the_wrong_type(gateway, name, value):
    body = {"prompt": "a cup", **CHEAP, name: value}
    status, headers, data = _call(gateway, body)
    err = _error(status, headers, data)
    assert status == 400 and err["code"] == "invalid_type" and err["param"] == name


BAD = [  # (body, status, code, param, words in the message)
    ({"prompt": "a cup", "width": 0}, 400, "out_of_range", "width", "positive INT32"),
    ({"prompt": "a cup", "steps": 2**31}, 400, "out_of_range", "steps", "[1, 2147483647]"),
    ({"prompt": "a cup", "fps": -8}, 400, "out_of_range", "fps", "positive INT32"),
    ({"prompt": "a cup", "width": 64.0}, 400, "invalid_type", "width", "integer"),
    ({"prompt": "a cup", "guidance_scale": 1e39}, 400, "out_of_range", "guidance_scale", "FP32"),
    ({"prompt": "a cup", "guidance_scale": 10**400}, 400, "out_of_range", "guidance_scale",
     "FP32"),
    ({"prompt": "a cup", "duration": 0, "fps": 8}, 400, "out_of_range", "duration", "(0,"),
    ({"prompt": "a cup", "duration": 3e38, "fps": 30}, 400, "out_of_range", "duration",
     "frames"),
    ({"prompt": "a cup", "timeout": -1}, 400, "out_of_range", "timeout", "(0, 86400]"),
    ({"prompt": "a cup", "duration": 1, "fps": 8, "num_frames": 9}, 400,
     "conflicting_parameters", "duration", "not both"),
    ({"prompt": "a cup", "duration": 1}, 400, "missing_parameter", "fps", "needs fps"),
    ({"width": 64}, 400, "missing_parameter", "prompt", "prompt is required"),
    ({"prompt": "a cup", "colour": "red"}, 400, "unknown_parameter", "colour",
     "unknown fields ['colour']"),
    ({"prompt": "\ud800 cup"}, 400, "invalid_value", "prompt", "lone surrogates"),
    ([{"prompt": "a cup"}], 400, "invalid_body", None, "JSON object, got array"),
    (b"{not json", 400, "invalid_json", None, "not valid JSON"),
    (b"\xc3\x28", 400, "invalid_json", None, "not valid JSON"),
    (b"[" * 50000, 400, "invalid_json", None, "recursion"),
    (b'{"prompt": "a cup", "seed": 1' + b"0" * 5000 + b"}", 400, "invalid_json", None, "digits"),
    (json.dumps({"prompt": "x" * 70000}).encode(), 413, "body_too_large", None, "65536"),
    # the server's own range check, passed on
    ({"prompt": "a cup", "width": 100}, 400, "invalid_request", "width",
     "width must be a multiple of 32 in [64, 832], got 100"),
    ({"prompt": "  "}, 400, "invalid_request", "prompt", "non-empty"),
    # an unknown model variant: the server names the ones it serves
    ({"prompt": "a cup", "model_variant": "turbo"}, 400, "invalid_request", "model_variant",
     "model_variant must be one of base, got 'turbo'"),
    ({"prompt": "a cup", "model_variant": 2}, 400, "invalid_type", "model_variant", "a string"),
]


@pytest.mark.parametrize("body, status, code, param, words", BAD)
def test_bad_input_is_a_json_error_naming_the_field(gateway, body, status, code, param, words):
    answer = _call(gateway, body)
    err = _error(*answer)
    assert (answer[0], err["code"], err["param"]) == (status, code, param), err
    assert words in err["message"]


def test_model_variant_picks_the_variant_and_the_info_header_names_it(gateway):
    status, headers, data = _call(gateway, {"prompt": "a cup", **CHEAP, "model_variant": "base"})
    _video(status, headers, data)
    assert json.loads(headers["X-T2V-Info"])["variant"] == "base"


def test_wrong_content_type_method_and_path_are_json_errors(gateway):
    answer = _call(gateway, b'{"prompt": "a cup"}', content_type="text/plain")
    assert answer[0] == 415 and _error(*answer)["code"] == "unsupported_media_type"
    for method in ("GET", "PUT", "DELETE"):
        answer = _call(gateway, method=method)
        assert answer[0] == 405 and _error(*answer)["code"] == "method_not_allowed"
        assert answer[1]["Allow"] == "POST"
    answer = _call(gateway, path="/t2v/nothing", method="GET")
    assert answer[0] == 404 and _error(*answer)["code"] == "not_found"


def test_an_unexpected_exception_is_a_logged_json_500_with_a_request_id(caplog):
    async def broken(request):
        raise RuntimeError("a bug in a handler")

    async def scenario():
        app = web.Application(middlewares=[json_errors])
        app.router.add_get("/broken", broken)
        async with TestServer(app, host="127.0.0.1") as server, TestClient(server) as client:
            r = await client.get("/broken")
            return r.status, r.headers, await r.read()

    with caplog.at_level(logging.ERROR, logger="t2vserve.client.gateway"):
        status, headers, data = asyncio.run(scenario())
    err = _error(status, headers, data)
    assert status == 500 and err["code"] == "internal_error" and err["param"] is None
    assert err["request_id"] in err["message"] and b"got itself in trouble" not in data
    assert "a bug in a handler" not in err["message"]  # internals stay in the log
    logged = [r for r in caplog.records if err["request_id"] in r.getMessage()]
    assert logged and "a bug in a handler" in str(logged[0].exc_info[1])


# -- fuzzing the body -----------------------------------------------------------------------

VALID = {"width": st.sampled_from([64, 96, 128]), "height": st.sampled_from([64, 96, 128]),
         "num_frames": st.sampled_from([5, 9]), "steps": st.integers(1, 2),
         "fps": st.integers(8, 30), "guidance_scale": st.floats(1, 20),
         "seed": st.integers(INT64_MIN, INT64_MAX), "negative_prompt": st.text(max_size=20),
         "timeout": st.floats(60, 600)}
PROMPTS = st.one_of(st.sampled_from(["a red cup rotating slowly", "一个银色保温杯放在木桌上",
                                     "🚲 на пляже", "a lamp, 台灯, white"]),
                    st.text(min_size=1, max_size=40))
JUNK = st.one_of(
    st.integers(), st.integers(-(2**80), 2**80),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, INT64_MAX, INT64_MAX + 1, INT64_MIN - 1, 10**23]),
    st.floats(), st.floats(0.05, 0.5), st.text(max_size=10), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2))


@st.composite
def bodies(draw):
    """A cheap valid request (half the time), then changed: fields dropped, set to junk or
    added under unknown names; now and then not an object at all."""
    kind = draw(st.sampled_from(["valid", "changed", "changed", "changed", "not an object"]))
    if kind == "not an object":
        return draw(JUNK)
    body = {"prompt": draw(PROMPTS), **CHEAP, **draw(st.fixed_dictionaries({}, optional=VALID))}
    if draw(st.booleans()):  # duration and fps instead of num_frames
        del body["num_frames"]
        body.update(duration=draw(st.floats(0.1, 0.5)), fps=draw(VALID["fps"]))
    if kind == "changed":
        names = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
        for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
            if draw(st.booleans()):
                body.pop(name, None)
            else:
                body[name] = draw(JUNK)
    return body


def test_fuzzed_bodies_are_a_video_or_a_4xx_json_error(gateway, server):
    answers = Counter()

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(bodies())
    def one(body):
        status, headers, data = _call(gateway, json.dumps(body).encode())
        if status == 200:
            _video(status, headers, data)
        elif status == 504:
            # the one 5xx a client can ask for: its own deadline (JUNK's 0.05-0.5 s floats as
            # `timeout`) ran out before the clip was made; anything else 5xx is a defect
            assert isinstance(body, dict) and body.get("timeout", 60) < 5, (body, data[:500])
            assert _error(status, headers, data)["code"] == "deadline_exceeded"
        else:
            assert 400 <= status < 500, (status, data[:500])
            _error(status, headers, data)
        answers[status] += 1

    t0 = time.monotonic()
    one()
    print(f"fuzz: {sum(answers.values())} bodies in {time.monotonic() - t0:.0f} s: "
          f"{dict(answers)}")
    assert answers[200] >= 30 and answers[400] >= 30  # both paths were exercised
    assert _call(gateway, path="/healthz", method="GET")[0] == 200
    _video(*_call(gateway, {"prompt": "a red cup rotating slowly", **CHEAP, "seed": 7}))
