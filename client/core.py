"""The thin gRPC client: one call, `generate`, over Triton's `t2v` ensemble. No model logic."""

import json
from dataclasses import dataclass

import numpy as np

MODEL = "t2v"
INT32_INPUTS = ("width", "height", "num_frames", "fps", "steps")


@dataclass(frozen=True)
class Video:
    mp4: bytes
    qc: dict
    info: dict


class T2VError(Exception):
    """A failed generation; `status` is the gRPC status name (e.g. INVALID_ARGUMENT)."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


QC_NAMES = ("mean_luma", "black_frame_ratio", "frozen_frame_ratio", "temporal_flicker")


def build_inputs(grpcclient, prompt: str, **params):
    """Triton InferInput list for `t2v`; parameters left as None are not sent (the server's
    profile supplies defaults)."""
    def tensor(name, array, dtype):
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    inputs = [tensor("prompt", np.array([prompt.encode("utf-8")], dtype=np.object_), "BYTES")]
    if params.get("negative_prompt") is not None:
        inputs.append(tensor("negative_prompt", np.array(
            [params["negative_prompt"].encode("utf-8")], dtype=np.object_), "BYTES"))
    for name in INT32_INPUTS:
        if params.get(name) is not None:
            inputs.append(tensor(name, np.array([params[name]], dtype=np.int32), "INT32"))
    if params.get("guidance_scale") is not None:
        inputs.append(tensor("guidance_scale", np.array([params["guidance_scale"]], np.float32), "FP32"))
    if params.get("seed") is not None:
        inputs.append(tensor("seed", np.array([params["seed"]], dtype=np.int64), "INT64"))
    return inputs


def parse_result(result) -> Video:
    mp4 = result.as_numpy("video").reshape(-1)[0]
    qc = result.as_numpy("qc").reshape(-1)
    info = json.loads(result.as_numpy("info").reshape(-1)[0])
    return Video(mp4=bytes(mp4), qc=dict(zip(QC_NAMES, map(float, qc))), info=info)


class T2VClient:
    """Synchronous client. `url` is host:port of Triton's gRPC endpoint."""

    def __init__(self, url: str = "127.0.0.1:8001"):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url=url)

    def generate(self, prompt: str, *, negative_prompt=None, width=None, height=None,
                 num_frames=None, fps=None, steps=None, guidance_scale=None, seed=None,
                 timeout: float | None = None, request_id: str = "") -> Video:
        from tritonclient.utils import InferenceServerException

        inputs = build_inputs(self._grpc, prompt, negative_prompt=negative_prompt, width=width,
                              height=height, num_frames=num_frames, fps=fps, steps=steps,
                              guidance_scale=guidance_scale, seed=seed)
        outputs = [self._grpc.InferRequestedOutput(n) for n in ("video", "qc", "info")]
        try:
            result = self.client.infer(MODEL, inputs, outputs=outputs, request_id=request_id,
                                       client_timeout=timeout)
        except InferenceServerException as exc:
            status = (exc.status() or "UNKNOWN").removeprefix("StatusCode.")
            raise T2VError(status, exc.message()) from exc
        return parse_result(result)

    def close(self) -> None:
        self.client.close()
