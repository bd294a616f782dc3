"""The torch runner with its GPU options: a compute dtype, torch.compile, CUDA graphs, and
the fused Triton kernels (`kernels="triton"`, `runners.fused`).

Same interface as `runners.TorchRunner` (`run(named tensors) -> named tensors`, on `device`).
On CPU it runs without graphs (compile still optional), so the whole path is tested without
a GPU; on CUDA one graph is captured per input-shape bucket and replayed.
"""

import torch

from t2vserve.export.wrappers import use_export_attention
from t2vserve.runners import to_device
from t2vserve.runners.fused import check_device, check_kernels, use_kernels

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def use_sdpa_attention(transformer) -> None:
    """SDPA at every dtype (see WanAttnProcessorExport): what eager GPU runs need."""
    use_export_attention(transformer, sdpa_always=True)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class CudaTorchRunner:
    """Runs an export wrapper on `device` in `dtype`, optionally compiled and graph-replayed.

    The module is moved and cast in place (as `nn.Module.to` does). Floating inputs reach the
    module in FP32 and the wrappers cast at their boundary, as their exported graphs do: a
    BF16 timestep would round 999 to 1000 before the DiT's FP32 time embedding saw it.
    """

    def __init__(self, module, input_names: list[str], output_names: list[str], *,
                 device: str = "cuda", dtype: str = "bf16", compile: bool = False,
                 cuda_graphs: bool = False, kernels: str = "off"):
        check_kernels(kernels, "kernels")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(self.device)!r} requested but CUDA is not available")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got device {str(self.device)!r}")
        self.dtype = DTYPES[dtype]
        self.module = module.eval().requires_grad_(False).to(device=self.device, dtype=self.dtype)
        for m in self.module.modules():
            # the VAE chunk wrappers cache their weights' dtype at construction
            if isinstance(m.__dict__.get("dtype"), torch.dtype):
                m.dtype = self.dtype
        self.kernels = kernels
        if kernels == "triton":
            check_device(self.device)
            use_kernels(self.module)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        self._fn = torch.compile(self.module) if compile else self.module
        self._graphs = {}  # bucket -> (graph, static inputs, static outputs)

    @staticmethod
    def bucket(args) -> tuple:
        return tuple((tuple(a.shape), a.dtype) for a in args)

    def _capture(self, args):
        # Private copies the graph reads from; replays copy new inputs into them.
        static_in = [a.clone() for a in args]
        # Lazy initialisation, cuBLAS/cuDNN heuristics and compilation must all happen
        # before capture, on a side stream as the CUDA graphs docs require.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._fn(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = _as_tuple(self._fn(*static_in))
        except RuntimeError as exc:
            raise RuntimeError(f"CUDA graph capture failed for input shapes "
                               f"{[tuple(a.shape) for a in args]}: {exc}") from exc
        # Each bucket keeps its own memory pool: outputs are cloned after every replay, but
        # private pools leave no ordering rule between buckets to get wrong.
        return graph, static_in, static_out

    def forward(self, *args: torch.Tensor) -> tuple:
        """Device tensors in `input_names` order -> output tensors on the device."""
        with torch.inference_mode():
            if not self.cuda_graphs:
                return _as_tuple(self._fn(*args))
            key = self.bucket(args)
            if key not in self._graphs:
                self._graphs[key] = self._capture(args)
            graph, static_in, static_out = self._graphs[key]
            for buf, a in zip(static_in, args):
                buf.copy_(a)
            graph.replay()
            # the next replay of this bucket overwrites static_out
            return tuple(o.clone() for o in static_out)

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named tensors in (moved to `device` if elsewhere), named tensors out on `device`,
        floating ones in FP32 (cast on the device)."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"missing inputs {missing}; expected {self.input_names}")
        out = self.forward(*(to_device(inputs[n], self.device) for n in self.input_names))
        return {n: o.float() if o.is_floating_point() else o
                for n, o in zip(self.output_names, out)}
