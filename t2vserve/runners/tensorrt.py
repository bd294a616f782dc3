"""TensorRT plans at serving time: load a plan, pick its optimisation profile, run it.

Written for TensorRT 10.x. `tensorrt` is imported inside functions, so this module imports on
machines without it. Device buffers are torch CUDA tensors (no pycuda). The plans are built by
`export/tensorrt_engine.py` (`t2vserve export --format tensorrt`).

A plan may hold several optimisation profiles, one per size the deployment profile serves
(832x480 and 480x832), so that no profile spans the box between them (832x832 activations).
Each optimisation profile gets its own execution context; the contexts share one activation
buffer, the largest profile's, because an instance runs one call at a time on one stream. A
call runs on the first profile whose ranges hold every input shape (`select_profile`).
"""

from pathlib import Path

Ranges = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def _trt():
    try:
        import tensorrt
    except ImportError as e:
        raise RuntimeError("TensorRT is not installed (pip's `tensorrt` needs NVIDIA's index and "
                           f"a GPU machine): {e}") from None
    return tensorrt


_LOGGER = []


def logger(trt):
    """One logger per process: TensorRT warns when builders and runtimes get different ones."""
    if not _LOGGER:
        _LOGGER.append(trt.Logger(trt.Logger.WARNING))
    return _LOGGER[0]


def fits(ranges: Ranges, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether every input shape lies inside one optimisation profile's (min, max)."""
    for name, shape in shapes.items():
        lo, _, hi = ranges[name]
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
    return True


def select_profile(profiles: list[Ranges], shapes: dict[str, tuple[int, ...]]) -> int:
    """The index of the first optimisation profile that holds these input shapes; ValueError
    naming every profile's ranges where none does."""
    for index, ranges in enumerate(profiles):
        if fits(ranges, shapes):
            return index
    described = "; ".join(
        f"profile {i}: " + ", ".join(f"{n} {list(lo)}..{list(hi)}"
                                     for n, (lo, _, hi) in ranges.items())
        for i, ranges in enumerate(profiles))
    given = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
    raise ValueError(f"input shapes {given} are outside every engine profile ({described})")


class Engine:
    """One loaded plan: `infer(named tensors) -> named CUDA tensors`."""

    def __init__(self, plan_path: str | Path):
        self.plan_path = Path(plan_path)
        self.engine = None
        self.contexts: list = []
        self.profiles: list[Ranges] = []

    @property
    def context(self):
        return self.contexts[0] if self.contexts else None

    def load(self) -> "Engine":
        if not self.plan_path.exists():
            raise FileNotFoundError(f"no TensorRT plan at {self.plan_path}: run "
                                    "`t2vserve export --format tensorrt --profile ...`")
        trt = _trt()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("a TensorRT engine needs a CUDA device; torch sees none")
        self._trt, self._torch = trt, torch
        self._runtime = trt.Runtime(logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not load {self.plan_path} (built by another TensorRT "
                               "version or for another GPU?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                 "INT8": torch.int8, "INT32": torch.int32, "INT64": torch.int64,
                 "BOOL": torch.bool, "UINT8": torch.uint8}
        by_enum = {getattr(trt.DataType, k): v for k, v in table.items()
                   if hasattr(trt.DataType, k)}
        self.dtypes = {n: by_enum[self.engine.get_tensor_dtype(n)] for n in names}
        count = self.engine.num_optimization_profiles
        self.profiles = [{n: tuple(tuple(d) for d in self.engine.get_tensor_profile_shape(n, i))
                          for n in self.input_names} for i in range(count)]
        self.contexts = self._contexts(count)
        return self

    def _contexts(self, count: int) -> list:
        trt, torch = self._trt, self._torch
        if count == 1:
            return [self.engine.create_execution_context()]
        # one context per profile over one shared activation buffer (calls never overlap)
        contexts = [self.engine.create_execution_context(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED) for _ in range(count)]
        size = getattr(self.engine, "device_memory_size_v2", None) or \
            self.engine.device_memory_size
        self._scratch = torch.empty(max(int(size), 1), dtype=torch.uint8, device="cuda")
        stream = torch.cuda.current_stream().cuda_stream
        for index, ctx in enumerate(contexts):
            if hasattr(ctx, "set_device_memory"):  # TensorRT 10.1+
                ctx.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
            else:
                ctx.device_memory = self._scratch.data_ptr()
            if not ctx.set_optimization_profile_async(index, stream):
                raise RuntimeError(f"{self.plan_path.stem}: could not select profile {index}")
        torch.cuda.current_stream().synchronize()
        return contexts

    def infer(self, feed: dict, device: str = "cuda") -> dict:
        """Torch tensors in (any device/dtype: moved and cast), CUDA tensors out, on the
        current stream; the caller synchronises (`.cpu()` does)."""
        if self.engine is None:
            self.load()
        torch = self._torch
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise KeyError(f"missing inputs {missing}; expected {self.input_names}")
        # inputs cast/copied here live until the call is queued; frees are stream-ordered
        keep = {n: feed[n].to(device=device, dtype=self.dtypes[n]).contiguous()
                for n in self.input_names}
        try:
            index = select_profile(self.profiles, {n: tuple(t.shape) for n, t in keep.items()})
        except ValueError as e:
            raise ValueError(f"{self.plan_path.stem}: {e}") from None
        ctx = self.contexts[index]
        for name, t in keep.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"{self.plan_path.stem}: profile {index} refused input {name} "
                                 f"shape {list(t.shape)}")
            ctx.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.plan_path.stem}: output {name} shape {shape} unresolved")
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=device)
            ctx.set_tensor_address(name, outputs[name].data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.plan_path.stem}: execute_async_v3 failed; see the log")
        return outputs

    def __call__(self, *args):
        """Positional in, tuple out, in graph order (the export wrappers' calling
        convention)."""
        out = self.infer(dict(zip(self.input_names, args)))
        return tuple(out[n] for n in self.output_names)


class TensorRTRunner:
    """The Runner interface over one plan: torch tensors in, CUDA tensors out, on `device`
    (the Triton instance's GPU; the plan is deserialised on the current CUDA device)."""

    def __init__(self, plan_path: str | Path, input_names: list[str] | None = None,
                 output_names: list[str] | None = None, device: str = "cuda"):
        self.engine = Engine(plan_path).load()
        self.device = self.engine._torch.device(device)
        self.input_names = list(input_names or self.engine.input_names)
        self.output_names = list(output_names or self.engine.output_names)
        for given, actual, what in ((self.input_names, self.engine.input_names, "inputs"),
                                    (self.output_names, self.engine.output_names, "outputs")):
            if sorted(given) != sorted(actual):
                raise ValueError(f"{plan_path}: {what} are {actual}, not {given}")

    def run(self, inputs: dict) -> dict:
        """Named torch tensors in, named CUDA tensors out (FP32 for floating outputs, cast on
        the device). Inputs elsewhere are moved to the engine's device; `Engine.infer` binds
        the tensors' device pointers, so nothing crosses to the host."""
        from t2vserve.runners import device_of, to_device

        torch = self.engine._torch
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"missing inputs {missing}; expected {self.input_names}")
        device = device_of(self)
        out = self.engine.infer({n: to_device(inputs[n], device) for n in self.input_names},
                                device=device)
        return {n: (out[n].float() if out[n].dtype in (torch.float16, torch.bfloat16)
                    else out[n]) for n in self.output_names}
