"""The client's error classes and what it refuses before sending (no server)."""

import pytest

from t2vserve.client import (
    Cancelled, DeadlineExceeded, InvalidRequest, QueueFull, ServerError, T2VDeadlineError,
    T2VError, Unavailable,
)
from t2vserve.client.core import classify, request_params


@pytest.mark.parametrize("status,message,kind,retryable", [
    ("INVALID_ARGUMENT", "width must be a multiple of 32 in [64, 832], got 100", InvalidRequest, False),
    ("UNAVAILABLE", "Exceeds maximum queue size", QueueFull, True),
    ("RESOURCE_EXHAUSTED", "out of memory for the batch", QueueFull, True),
    ("UNAVAILABLE", "failed to connect to all addresses", Unavailable, True),
    ("NOT_FOUND", "Request for unknown model: 't2v' has no available versions", Unavailable, True),
    ("NOT_FOUND", "Request for unknown model: 'x2v' is not found", ServerError, False),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded, False),
    ("CANCELLED", "request cancelled after step 3/8", Cancelled, False),
    ("INTERNAL", "dit: dit runner failed", ServerError, False),
    ("UNKNOWN", "boom", ServerError, False),
])
def test_each_status_has_its_class(status, message, kind, retryable):
    err = classify(status, message)
    assert type(err) is kind and isinstance(err, T2VError)
    assert err.status == status and err.retryable is retryable


def test_invalid_request_names_the_field_and_what_is_allowed():
    err = classify("INVALID_ARGUMENT", "num_frames must be 4k+1 in [5, 121], got 16")
    assert (err.param, err.allowed) == ("num_frames", "4k+1 in [5, 121]")
    assert isinstance(err, ValueError)  # old `except ValueError` callers still catch it
    free_text = classify("INVALID_ARGUMENT", "prompt is 301 tokens; the text encoder takes at most 256")
    assert (free_text.param, free_text.allowed) == (None, None)
    assert T2VDeadlineError is DeadlineExceeded


@pytest.mark.parametrize("params,message", [
    (dict(seed=10**23), "seed must be an integer in [-9223372036854775808, 9223372036854775807]"),
    (dict(seed=-(2**63) - 1), "seed must be an integer in [-9223372036854775808"),
    (dict(width=2**31), "width must be an integer in [-2147483648, 2147483647], got 2147483648"),
    (dict(steps=True), "steps must be an integer"),
    (dict(fps="24"), "fps must be an integer"),
    (dict(guidance_scale="5"), "guidance_scale must be a number"),
    (dict(duration=float("inf"), fps=24), "duration must be a finite number"),
    (dict(duration=3, num_frames=73), "give duration or num_frames, not both"),
    (dict(duration=3), "duration needs fps"),
    (dict(negative_prompt=b"x"), "negative_prompt must be a str"),
])
def test_what_the_wire_cannot_carry_is_refused_here(params, message):
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        request_params(**params)


def test_edges_of_the_wire_types_pass():
    p = request_params(seed=2**63 - 1, width=2**31 - 1, guidance_scale=float("nan"),
                       duration=3, fps=24)
    assert p["seed"] == 2**63 - 1 and p["num_frames"] == 73
    assert request_params(seed=-(2**63))["seed"] == -(2**63)
