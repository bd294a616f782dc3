"""Bad input (fuzzed), failures inside one request, and cancellation, against one server
with fault injection on (faults.enabled: dit raises for seed 13, returns NaN for seed 14)."""

import concurrent.futures as cf
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import infer, rss_kb, t2v_inputs

DIT_ERROR_SEED, NAN_SEED = 13, 14


@pytest.fixture(scope="module")
def served(module_serve):
    return module_serve({"models": {"t2v": {"instances": 4}},
                         "faults": {"enabled": True, "dit_error_seeds": [DIT_ERROR_SEED],
                                    "nan_seeds": [NAN_SEED]}}, name="faults")


@pytest.fixture(scope="module")
def grpc(served):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(served.grpc_url)
    yield c
    c.close()


# --- 1. fuzzed bad input ---------------------------------------------------------------
# Every example starts from a small valid request and breaks one to three things, so each
# one is invalid (and cheap: no generation runs).
TYPES = {"width": "INT32", "height": "INT32", "num_frames": "INT32", "fps": "INT32",
         "steps": "INT32", "guidance_scale": "FP32", "seed": "INT64"}
NP = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64}

out_of_range = {
    "width": st.one_of(st.integers(-2**31, 63), st.integers(833, 2**31 - 1),
                       st.integers(64, 832).filter(lambda v: v % 32)),
    "num_frames": st.one_of(st.integers(-2**31, 4), st.integers(122, 2**31 - 1),
                            st.integers(5, 121).filter(lambda v: (v - 1) % 4)),
    "steps": st.one_of(st.integers(-2**31, 0), st.integers(51, 2**31 - 1)),
    "fps": st.one_of(st.integers(-2**31, 7), st.integers(31, 2**31 - 1)),
    "guidance_scale": st.one_of(st.just(float("nan")), st.just(float("inf")),
                                st.just(float("-inf")), st.floats(-1e30, 0.999),
                                st.floats(20.001, 1e30)),
}
out_of_range["height"] = out_of_range["width"]

bad_prompts = st.one_of(
    st.just(b""), st.sampled_from([b"   ", b"\n\t "]),
    st.integers(4097, 20000).map(lambda n: b"x" * n),                    # over prompt_bytes
    st.integers(300, 900).map(lambda n: ("红 " * n).encode()),           # over prompt_tokens
    st.binary(min_size=1, max_size=64).map(lambda b: b"\xff" + b),       # not UTF-8
)


@st.composite
def bad_request(draw):
    fields = {"prompt": ("BYTES", [1], np.array([b"a red cup"], dtype=np.object_))}
    for name in ("width", "height"):
        fields[name] = (TYPES[name], [1], np.array([128], NP[TYPES[name]]))
    mutations = draw(st.lists(st.sampled_from(
        ["prompt", "negative", "range", "dtype", "shape", "unknown", "missing"]),
        min_size=1, max_size=3, unique=True))
    for m in mutations:
        if m == "prompt":
            fields["prompt"] = ("BYTES", [1], np.array([draw(bad_prompts)], dtype=np.object_))
        elif m == "negative":
            fields["negative_prompt"] = ("BYTES", [1], np.array([draw(bad_prompts.filter(
                lambda b: b.strip()))], dtype=np.object_))
        elif m == "range":
            name = draw(st.sampled_from(sorted(out_of_range)))
            fields[name] = (TYPES[name], [1], np.array([draw(out_of_range[name])], NP[TYPES[name]]))
        elif m == "dtype":
            name = draw(st.sampled_from(sorted(TYPES)))
            wrong = draw(st.sampled_from([t for t in ("INT32", "INT64", "FP32", "FP64")
                                          if t != TYPES[name]]))
            fields[name] = (wrong, [1], np.array([1], NP[wrong]))
        elif m == "shape":
            name = draw(st.sampled_from(sorted(TYPES)))
            n = draw(st.sampled_from([[2], [1, 1], [3, 2]]))
            fields[name] = (TYPES[name], n, np.ones(n, NP[TYPES[name]]))
        elif m == "unknown":
            fields["colour"] = ("INT32", [1], np.array([7], np.int32))
        elif m == "missing":
            fields.pop("prompt")
    return mutations, fields


def _send(grpc, fields):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name, (dtype, shape, value) in fields.items():
        t = grpcclient.InferInput(name, shape, dtype)
        t.set_data_from_numpy(value)
        inputs.append(t)
    try:
        grpc.infer("t2v", inputs, client_timeout=60)
        return "ok", ""
    except InferenceServerException as e:
        return str(e.status()).replace("StatusCode.", ""), e.message() or str(e)


def test_fuzzed_bad_requests_get_invalid_argument_and_the_server_stays_up(served, grpc, record):
    seen = {"examples": 0, "by_status": {}, "by_mutation": {}}

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(bad_request())
    def check(case):
        mutations, fields = case
        status, message = _send(grpc, fields)
        seen["examples"] += 1
        seen["by_status"][status] = seen["by_status"].get(status, 0) + 1
        for m in mutations:
            seen["by_mutation"][m] = seen["by_mutation"].get(m, 0) + 1
        # our validation's INVALID_ARG or Triton's own shape/dtype/name check: never INTERNAL
        assert status == "INVALID_ARGUMENT", (mutations, status, message)

    t0 = time.monotonic()
    check()
    took = time.monotonic() - t0
    assert seen["examples"] >= 300
    assert served.ready() and served.model_ready("t2v")
    status, message, _, result = infer(served.grpc_url, seed=7)
    assert status == "ok", message
    assert served.stats("dit")["fail"] == 0
    record("fuzz", what="hypothesis: 300 generated bad requests (empty/blank/huge/too many "
                        "tokens/non-UTF-8 prompts, out-of-range sizes/frames/steps/fps, "
                        "NaN/Inf/negative guidance, wrong dtypes and shapes, unknown and "
                        "missing inputs), then one good request",
           requests=seen["examples"] + 1, answers=seen["by_status"],
           mutations=seen["by_mutation"], took_s=round(took, 1), good_request_after="ok")


# --- 2. a failure inside one request fails that request only --------------------------
def test_a_failing_request_fails_alone(served, record):
    ref = infer(served.grpc_url, seed=21)
    assert ref[0] == "ok"
    with cf.ThreadPoolExecutor(4) as pool:
        futures = {seed: pool.submit(infer, served.grpc_url, seed=seed)
                   for seed in (DIT_ERROR_SEED, NAN_SEED, 21, 22)}
        results = {seed: f.result() for seed, f in futures.items()}
    assert results[DIT_ERROR_SEED][0] == "INTERNAL"
    assert "dit runner failed" in results[DIT_ERROR_SEED][1]
    assert results[NAN_SEED][0] == "INTERNAL"
    assert "non-finite latents at step 1/" in results[NAN_SEED][1]
    assert results[21][0] == results[22][0] == "ok"
    # the healthy neighbour's video is byte-identical to the one made alone
    video = lambda r: r.as_numpy("video").reshape(-1)[0]
    assert video(results[21][3]) == video(ref[3])
    assert served.ready()
    record("failure_isolation", what="4 concurrent requests: dit raises for one, returns NaN "
                                     "for another (fault injection), two healthy",
           requests=4, failed=2,
           errors=[results[DIT_ERROR_SEED][1], results[NAN_SEED][1]],
           healthy_ok=2, healthy_bytes_equal_alone=True)


# --- 4. cancel mid-denoise -----------------------------------------------------------------
def test_cancel_mid_denoise_stops_the_loop_within_one_step(served, record):
    import tritonclient.grpc as grpcclient

    steps = 50
    assert infer(served.grpc_url, seed=31, steps=steps, width=256, height=256)[0] == "ok"
    pids = served.stub_pids("t2v") + served.stub_pids("dit")
    rss_before = rss_kb(pids)
    c = grpcclient.InferenceServerClient(served.grpc_url)
    done = []
    dit0 = served.stats("dit")["success"]
    ctx = c.async_infer("t2v", t2v_inputs(seed=32, steps=steps, width=256, height=256),
                        callback=lambda result, error: done.append(error))
    deadline = time.monotonic() + 60
    while served.stats("dit")["success"] - dit0 < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    calls_at_cancel = served.stats("dit")["success"] - dit0
    ctx.cancel()
    time.sleep(3.0)  # longer than a few steps: the loop would have gone on by now
    calls_after = served.stats("dit")["success"] - dit0
    c.close()
    assert 10 <= calls_at_cancel < steps
    # the step running when the cancel landed may finish; no further dit call is made
    assert calls_after - calls_at_cancel <= 1, (calls_at_cancel, calls_after)
    assert done and "CANCELLED" in str(done[0]).upper()
    nxt = infer(served.grpc_url, seed=33)
    assert nxt[0] == "ok", nxt[1]
    rss_after = rss_kb(pids)
    # memory back to where it was (a few MB of allocator noise allowed)
    assert rss_after <= rss_before * 1.05 + 8192, (rss_before, rss_after)
    record("cancel", what=f"cancel a {steps}-step 256x256 request after 10 dit calls",
           dit_calls_at_cancel=calls_at_cancel, dit_calls_after=calls_after,
           steps=steps, next_request="ok",
           rss_before_mb=round(rss_before / 1024, 1), rss_after_mb=round(rss_after / 1024, 1))


def test_model_control_is_refused_without_the_supervisor_token(served):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{served.ports['http']}/v2/repository/models/"
                                 "t2v/unload", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("unload accepted without the token")
    except urllib.error.HTTPError as e:
        assert e.code == 403
    assert served.model_ready("t2v")
