"""`t2v_stream` and the clients' generate_stream / server_info, against a real tritonserver."""

import asyncio
import time

import pytest

from t2vserve.client import AsyncT2VClient, InvalidRequest, Progress, T2VClient, Video
from t2vserve.media import decode_mp4

SMALL = dict(width=64, height=64, num_frames=5, steps=3, seed=21)


def _dit_inferences(server) -> int:
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    s = c.get_inference_statistics(model_name="dit", as_json=True)["model_stats"][0]
    c.close()
    return int(s.get("inference_count", 0))


def test_progress_after_each_step_then_the_same_video_as_generate(client):
    prompt = "a red cup on a grey table, streamed"
    events = list(client.generate_stream(prompt, **SMALL))
    progress, video = events[:-1], events[-1]
    assert [(p.step, p.steps) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(p, Progress) for p in progress)
    elapsed = [p.elapsed_ms for p in progress]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert isinstance(video, Video) and video.info["dit_calls"] == 3
    # the same request through t2v: the same clip, byte for byte
    plain = client.generate(prompt, **SMALL)
    assert video.mp4 == plain.mp4 and video.qc == plain.qc
    assert video.model == plain.model and video.request == plain.request
    assert decode_mp4(video.mp4)[0].shape == (5, 64, 64, 3)


def test_async_stream_gives_the_same_events(server, client):
    async def collect():
        async with AsyncT2VClient(server.grpc_url) as c:
            return [e async for e in c.generate_stream("a blue ball, async stream", **SMALL)]
    events = asyncio.run(collect())
    assert [e.step for e in events[:-1]] == [1, 2, 3]
    assert events[-1].mp4 == client.generate("a blue ball, async stream", **SMALL).mp4


def test_bad_input_is_invalid_request_and_the_server_stays_live(client):
    with pytest.raises(InvalidRequest) as caught:
        list(client.generate_stream("a green box", width=70, height=64, num_frames=5, steps=2))
    assert caught.value.param == "width" and "multiple of 32" in caught.value.allowed
    with pytest.raises(InvalidRequest, match="model_variant"):
        next(client.generate_stream("a green box", model_variant="nope", **SMALL))
    assert client.client.is_server_live()
    assert isinstance(list(client.generate_stream("a green box", **SMALL))[-1], Video)


def test_closing_the_stream_cancels_the_request_between_steps(server, client):
    start = _dit_inferences(server)
    stream = client.generate_stream("a yellow ball, cancelled", width=256, height=256,
                                    num_frames=33, steps=40, seed=3)
    first = next(stream)
    assert (first.step, first.steps) == (1, 40)
    stream.close()
    closed_at = _dit_inferences(server)
    time.sleep(2.0)  # not closed, the loop makes ~11 more steps in these 2 s (measured)
    used = _dit_inferences(server) - start
    # a step is 2 dit inferences (the CFG pair): after the close at most the step running
    # then and the one after it
    assert used <= closed_at - start + 4, (closed_at - start, used)
    assert used < 10
    assert isinstance(list(client.generate_stream("a yellow ball", **SMALL))[-1], Video)


def test_server_info_names_the_served_model_and_the_defaults(server, client):
    info = client.server_info()
    video = client.generate("a white box, info", **SMALL)
    assert list(info["model_ids"]) == ["base"]
    assert video.model in info["model_ids"].values()
    defaults = server.profile.defaults
    assert {k: info["request_defaults"][k] for k in defaults} == defaults
    assert info["request_defaults"]["negative_prompt"]  # the Wan default, in Chinese

    async def from_async():
        async with AsyncT2VClient(server.grpc_url) as c:
            return await c.server_info()
    assert asyncio.run(from_async()) == info
    with T2VClient(server.grpc_url) as other:  # and t2v_stream publishes the same
        config = other.client.get_model_config("t2v_stream", as_json=True)["config"]
        assert config["parameters"]["model_ids"] == \
            other.client.get_model_config("t2v", as_json=True)["config"]["parameters"]["model_ids"]


def test_stream_errors_map_to_the_classes_generate_raises():
    """A gRPC stream carries an error's message without its code: t2v_stream tags its own,
    Triton's queue answers are recognised by their text, a failed stream keeps its status."""
    from tritonclient.utils import InferenceServerException

    from t2vserve.client import Cancelled, DeadlineExceeded, QueueFull, ServerError, Unavailable
    from t2vserve.client.core import stream_error

    def err(message, status=None):
        return stream_error(InferenceServerException(message, status=status))

    invalid = err("[INVALID_ARGUMENT] steps must be in [1, 50], got 99")
    assert isinstance(invalid, InvalidRequest) and invalid.param == "steps"
    assert invalid.allowed == "in [1, 50]" and invalid.message.startswith("steps must")
    assert isinstance(err("[CANCELLED] request cancelled after step 3/8"), Cancelled)
    assert isinstance(err("[INTERNAL] dit: boom"), ServerError)
    assert isinstance(err("Exceeds maximum queue size"), QueueFull)
    assert isinstance(err("Request for unknown model: 't2v_stream' has no available versions"),
                      Unavailable)
    assert isinstance(err("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), DeadlineExceeded)
    assert type(err("something else")) is ServerError
