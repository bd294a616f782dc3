"""Runtimes behind one interface: `run(inputs) -> outputs` over named torch tensors.

A runner takes and returns tensors on its own device (`runner.device`): torch directly,
ONNX Runtime through IOBinding (inputs bound at the tensors' own memory, outputs handed
back through DLPack without a copy), TensorRT through device pointers. Host numpy appears
only at the edges (a request's own inputs, the MP4; tensors between Triton models travel by
DLPack): `to_device` and `to_host` are those crossings. Floating outputs are FP32 whatever the graph computes in; the casts happen on the
device.
"""

from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]
    device: torch.device

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def device_of(runner) -> torch.device:
    """The device a runner takes and returns tensors on (every runner has `device`)."""
    return torch.device(runner.device)


def to_device(value, device) -> torch.Tensor:
    """An edge crossing in: a numpy array (or tensor) as a tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    value = np.asarray(value)
    if not value.flags.writeable:  # Triton's input arrays are read-only views
        value = value.copy()
    return torch.from_numpy(np.ascontiguousarray(value)).to(device)


def to_host(value: torch.Tensor) -> np.ndarray:
    """An edge crossing out: a tensor as a host numpy array."""
    return value.detach().cpu().numpy()


def _check_inputs(runner: Runner, inputs: dict) -> None:
    missing = [n for n in runner.input_names if n not in inputs]
    if missing:
        raise KeyError(f"missing inputs {missing}; expected {runner.input_names}")


def _fp32_out(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


_ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16,
               "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
               "tensor(bool)": torch.bool}
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64,
                 torch.int32: np.int32, torch.bool: np.bool_}


class OnnxRuntimeRunner:
    def __init__(self, path: str | Path, *, providers: list | None = None,
                 intra_op_threads: int = 0):
        import onnxruntime as ort

        if not Path(path).exists():
            raise FileNotFoundError(f"no ONNX graph at {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0: one per core
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_dtypes = {i.name: _ORT_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self.device = torch.device("cpu")
        for p in self.session.get_providers():
            if p == "CUDAExecutionProvider":
                opts = self.session.get_provider_options().get(p, {})
                self.device = torch.device("cuda", int(opts.get("device_id", 0)))
                break

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _check_inputs(self, inputs)
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        keep = []  # the bound memory must outlive the run
        for name in self.input_names:
            t = to_device(inputs[name], self.device)
            dtype = self._input_dtypes[name]
            if dtype is not None and t.dtype != dtype:
                t = t.to(dtype)  # e.g. FP32 -> FP16 for an FP16 graph, on the device
            t = t.contiguous()
            keep.append(t)
            binding.bind_input(name, kind, index, _NUMPY_DTYPES[t.dtype], tuple(t.shape),
                               t.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, kind, index)
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch
        self.session.run_with_iobinding(binding)
        # DLPack hands ORT's output buffers to torch without a copy; the capsule owns them
        return {n: _fp32_out(torch.from_dlpack(v._ortvalue))
                for n, v in zip(self.output_names, binding.get_outputs())}


class TorchRunner:
    """Runs an export wrapper module in eager mode (the reference path)."""

    def __init__(self, module, input_names: list[str], output_names: list[str], *,
                 device: str = "cpu"):
        self.module = module.eval()
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = torch.device(device)

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _check_inputs(self, inputs)
        args = [to_device(inputs[n], self.device) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.detach().float() if o.is_floating_point() else o.detach()
                for n, o in zip(self.output_names, out)}
