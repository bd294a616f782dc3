"""The Triton edges of the Python-backend models: inputs and outputs as torch tensors (by
DLPack, on whatever device their producer left them) or numpy arrays (strings), BLS calls,
errors as responses, and dynamic batching inside a Python model.

Only `triton_models.py` (inside a Triton stub) imports this module.
"""

import time
from collections import defaultdict

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from t2vserve.schema import RequestValidationError


def input_array(request, name):
    """A string (or a request's own scalar) input as a host numpy array; None if absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def from_triton(tensor) -> torch.Tensor:
    """A numeric Triton tensor as a torch tensor on its own device, without a copy."""
    return torch.from_dlpack(tensor.to_dlpack())


def input_tensor(request, name):
    """A numeric input as a torch tensor where Triton put it (GPU or CPU); None if absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else from_triton(tensor)


def to_triton(name: str, value) -> "pb_utils.Tensor":
    """A torch tensor (any device) by DLPack, or a numpy array, as a Triton tensor."""
    if isinstance(value, torch.Tensor):
        return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))
    return pb_utils.Tensor(name, np.ascontiguousarray(value))


def bytes_array(value: bytes | str, shape=(1,)) -> np.ndarray:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return np.array([data], dtype=np.object_).reshape(shape)


def string_of(array) -> str:
    return bytes(np.asarray(array).reshape(-1)[0]).decode("utf-8")


class RequestCancelled(Exception):
    pass


def error_response(exc: Exception, tagged: bool = False):
    """`exc` as an error response. `tagged`: the message starts with the gRPC status name in
    brackets ("[INVALID_ARGUMENT] width must be ..."), because a gRPC stream carries an
    error's message but not its code (t2v_stream's clients read it back)."""
    if isinstance(exc, RequestValidationError):
        code, status = pb_utils.TritonError.INVALID_ARG, "INVALID_ARGUMENT"
    elif isinstance(exc, RequestCancelled):
        code, status = pb_utils.TritonError.CANCELLED, "CANCELLED"
    else:
        code, status = pb_utils.TritonError.INTERNAL, "INTERNAL"
    message = f"[{status}] {exc}" if tagged else str(exc)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _concat(parts):
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def batched(requests, names, run, inputs_of=None):
    """Dynamic batching in a Python model: concatenate the requests that share shapes, run
    once, split the outputs back by each request's batch size. If a merged run fails, each
    of its requests runs alone, so one bad request fails itself and not its batchmates.
    `inputs_of(request)` gives a request's inputs (tensors or arrays) where they are not
    just its numeric `names`."""
    responses = [None] * len(requests)
    groups = defaultdict(list)
    for i, r in enumerate(requests):
        arrays = inputs_of(r) if inputs_of else [input_tensor(r, n) for n in names]
        groups[tuple(tuple(a.shape[1:]) for a in arrays)].append((i, arrays))

    def run_group(members):
        batch = [_concat([m[1][k] for m in members]) for k in range(len(members[0][1]))]
        outputs = run(*batch)
        offset = 0
        for i, arrays in members:
            n = arrays[0].shape[0]
            responses[i] = pb_utils.InferenceResponse(
                [to_triton(name, v[offset:offset + n]) for name, v in outputs.items()])
            offset += n

    for members in groups.values():
        try:
            run_group(members)
        except Exception as exc:
            if len(members) == 1:
                responses[members[0][0]] = error_response(exc)
                continue
            for member in members:
                try:
                    run_group([member])
                except Exception as exc_one:
                    responses[member[0]] = error_response(exc_one)
    return responses


# How long a stage call waits for a stage whose stub process died (kill -9, the OOM killer)
# to come back: the supervisor notices within its 1 s poll and reloads the model (7 s
# measured on cpu-tiny); past this the request fails with the stage's error.
STAGE_RETRY_S = 60.0
# Triton's answers while a stage's stub is dead ("Stub process 'dit_0_0' is not healthy.")
# or while its model is being reloaded; nothing else is retried
_STAGE_GONE = ("is not healthy", "has no available versions")


def stage_gone(message: str) -> bool:
    """True for an error that says the stage's stub died or is being replaced, not that
    the call itself failed."""
    return any(s in message for s in _STAGE_GONE)


def bls(model: str, inputs: dict, outputs: list[str], parameters: dict | None = None,
         strings: tuple[str, ...] = (), retry_s: float = 0.0, check=None) -> dict:
    """One call to another model of this server; an error there becomes an exception here.
    Inputs are tensors (sent by DLPack from their device) or numpy arrays; outputs come back
    as torch tensors where the producer left them, the `strings` ones as numpy arrays.

    `retry_s` > 0 (idempotent calls only): while the callee's stub is dead or reloading,
    try again with backoff for up to that long; `check(why)` runs before each retry and may
    raise (the caller's cancellation)."""
    give_up = time.monotonic() + retry_s
    pause = 0.1
    while True:
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=outputs,
            inputs=[to_triton(name, value) for name, value in inputs.items()],
            **({"parameters": parameters} if parameters else {}))
        try:
            response = request.exec()
            message = response.error().message() if response.has_error() else None
        except pb_utils.TritonModelException as exc:  # the call could not even be made
            message = str(exc)
        if message is None:
            break
        if not stage_gone(message) or time.monotonic() + pause > give_up:
            raise RuntimeError(f"{model}: {message}")
        time.sleep(pause)
        pause = min(2 * pause, 2.0)
        if check is not None:
            check(f"while waiting for {model} to come back")
    out = {}
    for name in outputs:
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        out[name] = tensor.as_numpy() if name in strings else from_triton(tensor)
    return out
