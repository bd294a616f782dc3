"""Runtimes behind one interface: `run(inputs) -> outputs` over named numpy arrays.

`onnxruntime` serves on CPU here (and CUDA where its EP exists); `torch` runs the export
wrappers eagerly and is the reference. TensorRT plugs in behind the same interface.
"""

from pathlib import Path
from typing import Protocol

import numpy as np


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _check_inputs(runner: Runner, inputs: dict[str, np.ndarray]) -> None:
    missing = [n for n in runner.input_names if n not in inputs]
    if missing:
        raise KeyError(f"missing inputs {missing}; expected {runner.input_names}")


class OnnxRuntimeRunner:
    def __init__(self, path: str | Path, *, providers: list[str] | None = None,
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
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_inputs(self, inputs)
        feed = {}
        for name in self.input_names:
            value = np.ascontiguousarray(inputs[name])
            if self._input_types[name] == "tensor(float16)" and value.dtype != np.float16:
                value = value.astype(np.float16)
            elif self._input_types[name] == "tensor(float)" and value.dtype != np.float32:
                value = value.astype(np.float32)
            feed[name] = value
        outputs = self.session.run(self.output_names, feed)
        return {n: (o.astype(np.float32) if o.dtype == np.float16 else o)
                for n, o in zip(self.output_names, outputs)}


class TorchRunner:
    """Runs an export wrapper module in eager mode (the reference path)."""

    def __init__(self, module, input_names: list[str], output_names: list[str], *,
                 device: str = "cpu"):
        import torch

        self.torch = torch
        self.module = module.eval()
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = torch.device(device)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_inputs(self, inputs)
        torch = self.torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device)
                for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.detach().float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy()
                for n, o in zip(self.output_names, out)}
