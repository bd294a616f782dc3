"""Checks every kernel wrapper makes before launching: dtype, shape, strides, device."""

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
FLOAT_NAMES = "float32, float16 or bfloat16"


def interpreted(kernel) -> bool:
    """Whether `kernel` was built for Triton's CPU interpreter: TRITON_INTERPRET=1 when its
    module was imported (setting it later changes nothing)."""
    return isinstance(kernel, InterpretedFunction)


def check_tensor(where: str, name: str, t, ndim: int, kernel, float64: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS and not (float64 and t.dtype == torch.float64):
        names = FLOAT_NAMES.replace(" or", ",") + " or float64" if float64 else FLOAT_NAMES
        raise ValueError(f"{where}: {name} must be {names}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{where}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreted(kernel):
        return
    raise ValueError(f"{where}: {name} must be a CUDA tensor (CPU tensors only under Triton's "
                     f"interpreter, TRITON_INTERPRET=1 before t2vserve.kernels is imported); "
                     f"got a {t.device.type} tensor")


def check_same_device(where: str, **tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{where}: all tensors must be on one device, got {listed}")


def check_last_dim_contiguous(where: str, name: str, t) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{where}: {name} must be contiguous in its last dimension "
                         f"(stride 1), got strides {t.stride()}")


def check_modulation(where: str, name: str, t, b: int, l: int, c: int, kernel) -> tuple[int, int]:
    """A per-sample (B, 1, C) or per-token (B, L, C) row of AdaLN parameters; returns its
    (batch, token) strides, the token stride 0 for per-sample."""
    check_tensor(where, name, t, 3, kernel)
    if tuple(t.shape) not in ((b, 1, c), (b, l, c)):
        raise ValueError(f"{where}: {name} must be per sample {(b, 1, c)} or per token "
                         f"{(b, l, c)}, got {tuple(t.shape)}")
    check_last_dim_contiguous(where, name, t)
    return t.stride(0), (t.stride(1) if t.shape[1] == l and l > 1 else 0)


def check_index_range(where: str, *tensors) -> None:
    # the kernels compute element offsets in 32 bits
    for t in tensors:
        if t is None:
            continue
        last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
        if last >= 2**31:
            raise ValueError(f"{where}: a tensor of shape {tuple(t.shape)} and strides "
                             f"{t.stride()} is too large (element offsets must be < 2**31)")


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(n)
