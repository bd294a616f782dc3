"""TensorRT engine builds: one spec per graph, one plan per spec (`build_plan`).

Written for TensorRT 10.x, weakly typed: the FP32 ONNX export is parsed and TensorRT picks
FP16/BF16 kernels where a precision flag allows, except for the layers pinned to FP32 below.
TensorRT 11 removed these flags (strong typing only), so a reduced-precision build refuses to
run there. `tensorrt` and `polygraphy` are imported inside functions: this module imports on
machines without them. Device buffers are torch CUDA tensors (no pycuda).

The graphs parsed are always an FP32 export (`build_input_dir`; `check_build_input` refuses
anything else). The FP16 export writes the DiT's attention as MatMul -> Cast(FP32) -> Softmax
-> Cast -> MatMul (an FP32 island, for ONNX Runtime): in TensorRT those casts pin the softmax
and break the fused attention kernel, so the L x L scores would be materialised. In the FP32
graph the softmax sits straight between the two MatMuls and the builder fuses it.

`--compare` lives in `export/tensorrt_compare.py`; loading and running plans (the serving
side: `Engine`, `TensorRTRunner`, one optimisation profile per served size) in
`t2vserve/runners/tensorrt.py`.

What is pinned to FP32 in a reduced-precision build, and why (`pin_fp32_layers`):
- normalisation and reduction layers (LayerNorm; the mean of RMSNorm, the sum of the VAE's
  L2 norm): FP16 sums of squares overflow once |x| passes ~256;
- squares (POW, and the x*x ONNX ReduceL2 becomes) for the same reason, and GELU's x**3;
- SQRT / RECIP unary layers (RMSNorm's rsqrt);
- everything computed from a reduction's output until it meets full-size activations again
  (the `+ eps`, sqrt, reciprocal, clamp chain);
- float arithmetic on constants and shapes alone (umT5's relative-position buckets: a Log
  whose BF16 rounding would move bucket boundaries);
- for the DiT, everything computed from the `timestep` input alone: the sinusoidal embedding
  (FP16 spacing near t = 1000 is 0.5 rad, so sin(t * f) would be noise), the time MLP and the
  modulation tables, which diffusers keeps in FP32 too (`_keep_in_fp32_modules`);
- the attention softmax of the text encoder and the VAE, not of the DiT (`FUSED_ATTENTION`);
- any layer whose name matches a spec's `fp32_patterns` (regular expressions), for overrides.
Matrix multiplies and convolutions on activations stay in reduced precision.
"""

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from t2vserve.export.trt_profiles import COMPONENT, GRAPHS, limit_corners, \
    optimisation_profiles, request_shapes
from t2vserve.runners.tensorrt import _trt, fits, logger

# Allowed precision per component. umT5 activations overflow FP16 (why T5 models run in BF16
# or FP32); the DiT runs FP16 or BF16 with the pins below; the VAE FP16 or FP32.
PRECISIONS = {"text_encoder": ("bf16", "fp32"), "dit": ("fp16", "bf16", "fp32"),
              "vae_decoder": ("fp16", "fp32")}
# graph inputs whose forward closure (with constants) runs in FP32; see the module docstring
FP32_INPUTS = {"dit": ("timestep",)}
# Graphs whose attention softmax is left to TensorRT: its fused attention kernel (FP32 softmax
# statistics inside) needs FP16/BF16 inputs to both matmuls; an FP32-pinned softmax breaks the
# fusion and materialises the L x L scores: 2 x 24 x 27k^2 floats = 143 GB for a 720p DiT call.
FUSED_ATTENTION = ("dit",)
DEFAULT_WORKSPACE_GB = 16.0
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class EngineSpec:
    graph: str
    onnx_path: Path
    plan_path: Path
    precision: str  # fp32 | fp16 | bf16
    profiles: tuple[Shapes, ...]  # one optimisation profile per served size (or one in all)
    fp32_patterns: tuple[str, ...] = ()  # layer-name regexes pinned on top of the type rules
    fp32_inputs: tuple[str, ...] = ()  # graph inputs whose forward closure stays FP32
    fp32_softmax: bool = True

    @property
    def shapes(self) -> Shapes:
        """The profiles' envelope: input name -> (min, the first profile's opt, max)."""
        def bound(pick, name, end):
            return tuple(pick(dims) for dims in zip(*(p[name][end] for p in self.profiles)))
        return {n: (bound(min, n, 0), trio[1], bound(max, n, 2))
                for n, trio in self.profiles[0].items()}


@dataclass(frozen=True)
class ArtifactPaths:
    onnx_dir: Path
    plans_dir: Path
    timing_cache: Path

    @classmethod
    def for_profile(cls, profile) -> "ArtifactPaths":
        plans = profile.artifacts / "tensorrt"
        return cls(build_input_dir(profile.artifacts), plans, plans / "timing.cache")

    @classmethod
    def of(cls, onnx_dir, plans_dir) -> "ArtifactPaths":
        return cls(Path(onnx_dir), Path(plans_dir), Path(plans_dir) / "timing.cache")

    def onnx(self, graph: str) -> Path:
        return self.onnx_dir / f"{graph}.onnx"

    def plan(self, graph: str) -> Path:
        return self.plans_dir / f"{graph}.plan"

    @property
    def engines_json(self) -> Path:
        return self.plans_dir / "engines.json"


def _precisions(onnx_dir: Path) -> dict:
    return json.loads((Path(onnx_dir) / "manifest.json").read_text()).get("precision", {})


def build_input_dir(artifacts: str | Path) -> Path:
    """Where the graphs TensorRT parses live: the served export if it is FP32, else an FP32
    export of the same weights next to the plans (`t2vserve export --format tensorrt` writes
    it). The profile's precisions are the builder's, never the graphs'."""
    artifacts = Path(artifacts)
    if (artifacts / "manifest.json").exists() and \
            all(v == "float32" for v in _precisions(artifacts).values()):
        return artifacts
    return artifacts / "tensorrt" / "onnx-fp32"


def explicit_fp32_softmax(onnx_path: str | Path) -> list[str]:
    """Softmax nodes written as an FP32 island between two MatMuls: the input is a
    Cast-to-float of a MatMul's output (scaling ops between allowed) and the output reaches a
    MatMul. TensorRT cannot fuse such an attention (see the module docstring)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    passthrough = {"Cast", "Mul", "Div", "Add", "Sub", "Where"}

    def cast_of_matmul(name: str) -> bool:
        cast = False
        for _ in range(8):
            node = producer.get(name)
            if node is None:
                return False
            if node.op_type == "MatMul":
                return cast
            if node.op_type not in passthrough:
                return False
            if node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                cast = cast or to == onnx.TensorProto.FLOAT
            name = node.input[0]
        return False

    def reaches_matmul(name: str) -> bool:
        for _ in range(8):
            nexts = consumers.get(name, [])
            if any(n.op_type == "MatMul" for n in nexts):
                return True
            nexts = [n for n in nexts if n.op_type in passthrough]
            if len(nexts) != 1:
                return False
            name = nexts[0].output[0]
        return False

    return [n.name or n.output[0] for n in graph.node if n.op_type == "Softmax"
            and cast_of_matmul(n.input[0]) and reaches_matmul(n.output[0])]


def check_build_input(onnx_dir: str | Path) -> dict:
    """The manifest of onnx_dir if its graphs are what TensorRT should parse (an FP32 export,
    no FP32 softmax island); ValueError naming what is wrong otherwise."""
    onnx_dir = Path(onnx_dir)
    manifest_path = onnx_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: run `t2vserve export` first")
    manifest = json.loads(manifest_path.read_text())
    reduced = {k: v for k, v in manifest.get("precision", {}).items() if v != "float32"}
    if reduced:
        raise ValueError(f"{onnx_dir} is a reduced-precision export ({reduced}); TensorRT "
                         "builds from the FP32 export (precision comes from the builder): "
                         "`t2vserve export --precision fp32`")
    for graph in GRAPHS:
        islands = explicit_fp32_softmax(onnx_dir / f"{graph}.onnx")
        if islands:
            raise ValueError(f"{onnx_dir / graph}.onnx has {len(islands)} FP32 softmax "
                             f"islands between MatMuls ({islands[0]}, ...); TensorRT cannot "
                             "fuse that attention")
    return manifest


def component_precision(profile, component: str) -> str:
    precision = profile.data["components"][component]["precision"]
    allowed = PRECISIONS[component]
    if precision not in allowed:
        why = " (umT5 activations overflow FP16)" if component == "text_encoder" else ""
        raise ValueError(f"components.{component}.precision {precision!r} is not supported by "
                         f"the TensorRT build; choose one of {', '.join(allowed)}{why}")
    return precision


def engine_specs(profile, manifest: dict, paths: ArtifactPaths) -> list[EngineSpec]:
    """One spec per graph: precision from the profile, shapes from its limits. No TensorRT.

    Where the profile lists its sizes (`limits.sizes`), each graph gets one optimisation
    profile per size (identical ones merged: the text encoder's do not depend on the size),
    so an engine holds no activation memory for sizes it never serves; else one profile
    spanning the ranges."""
    if profile.limits.sizes:
        per_size = [optimisation_profiles(profile, manifest, size=size)
                    for size in profile.limits.admitted_sizes()]
    else:
        per_size = [optimisation_profiles(profile, manifest)]
    specs = []
    for graph in GRAPHS:
        profiles = []
        for shapes in per_size:
            if shapes[graph] not in profiles:
                profiles.append(shapes[graph])
        component = COMPONENT[graph]
        specs.append(EngineSpec(graph, paths.onnx(graph), paths.plan(graph),
                                component_precision(profile, component), tuple(profiles),
                                fp32_inputs=FP32_INPUTS.get(graph, ()),
                                fp32_softmax=graph not in FUSED_ATTENTION))
    return specs


def check_specs_cover(profile, specs: list[EngineSpec], manifest: dict) -> None:
    """ValueError unless every size the limits admit, at the fewest and the most frames,
    fits one optimisation profile of every graph (what a request will be run on)."""
    by_graph = {s.graph: s for s in specs}
    for w, h, f in limit_corners(profile):
        for graph, shapes in request_shapes(profile, w, h, f, manifest).items():
            if not any(fits(p, shapes) for p in by_graph[graph].profiles):
                raise ValueError(f"{w}x{h}, {f} frames: no optimisation profile of {graph} "
                                 f"holds input shapes {shapes}")


def pin_fp32_layers(trt, network, *, softmax: bool = True, patterns=(),
                    fp32_inputs=()) -> list[str]:
    """Set FP32 precision and output types on the layers listed in the module docstring;
    returns their names. Layers come in topological order (the ONNX node order)."""
    classes = {trt.LayerType.ELEMENTWISE: trt.IElementWiseLayer,
               trt.LayerType.UNARY: trt.IUnaryLayer}
    floats = {trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float32)}
    seeds = {trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE}
    if softmax:
        seeds.add(trt.LayerType.SOFTMAX)
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.CAST}
    unary = {trt.UnaryOperation.SQRT, trt.UnaryOperation.RECIP}
    regexes = [re.compile(p, re.IGNORECASE) for p in patterns]
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    variable = set(inputs)  # tensors whose values depend on a graph input (not only its shape)
    small = {n for n in inputs if n in fp32_inputs}  # FP32 islands that propagate
    pinned = []
    for layer in network:
        ins = [t for t in (layer.get_input(i) for i in range(layer.num_inputs)) if t is not None]
        outs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if layer.type != trt.LayerType.SHAPE and any(t.name in variable for t in ins):
            variable.update(t.name for t in outs)
        acts = [t for t in ins if t.dtype in floats and t.name in variable]
        closure = bool(acts) and all(t.name in small for t in acts)
        if closure or layer.type == trt.LayerType.REDUCE:
            small.update(t.name for t in outs)
        if layer.type in skip or not outs or not all(t.dtype in floats for t in outs):
            continue
        if layer.type in classes:
            layer.__class__ = classes[layer.type]  # the bindings' way to reach `.op`
        square = (layer.type == trt.LayerType.ELEMENTWISE
                  and (layer.op == trt.ElementWiseOperation.POW
                       or layer.op == trt.ElementWiseOperation.PROD and len(ins) == 2
                       and ins[0].name == ins[1].name))
        from_constants = bool(ins) and layer.type in classes and outs[0].name not in variable
        if (layer.type in seeds or square or closure or from_constants
                or layer.type == trt.LayerType.UNARY and layer.op in unary
                or any(r.search(layer.name) for r in regexes)):
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.__class__ = trt.INormalizationLayer
                if hasattr(layer, "compute_precision"):
                    layer.compute_precision = trt.float32
            pinned.append(layer.name)
    return pinned


def build_plan(spec: EngineSpec, timing_cache_path: str | Path | None = None,
               workspace_gb: float = DEFAULT_WORKSPACE_GB) -> dict:
    """Parse spec.onnx_path, build with the spec's precision and optimisation profiles, write
    spec.plan_path; returns what engines.json records for it."""
    plan_path = Path(spec.plan_path)
    if not Path(spec.onnx_path).exists():
        raise FileNotFoundError(f"no ONNX graph at {spec.onnx_path}: run `t2vserve export`")
    trt = _trt()
    t0 = time.perf_counter()
    log = logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, log)
    # from a file, so weights stored as external data next to the graph are found
    if not parser.parse_from_file(str(spec.onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {spec.onnx_path}:\n{errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for shapes in spec.profiles:
        if names != set(shapes):
            raise ValueError(f"{spec.graph}: graph inputs {sorted(names)} but profile shapes "
                             f"for {sorted(shapes)}")
        opt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            opt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(opt_profile)

    pinned = []
    if spec.precision != "fp32":
        flag = {"fp16": "FP16", "bf16": "BF16"}[spec.precision]
        if not hasattr(trt.BuilderFlag, flag):
            raise RuntimeError(f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (weak "
                               "typing was removed in 11.x); build with TensorRT 10.x")
        config.set_flag(getattr(trt.BuilderFlag, flag))
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = pin_fp32_layers(trt, network, softmax=spec.fp32_softmax,
                                 patterns=spec.fp32_patterns, fp32_inputs=spec.fp32_inputs)

    cache_path = Path(timing_cache_path) if timing_cache_path else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # a cache from another GPU or TensorRT version: start an empty one
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {spec.graph}; see its log above")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    with open(plan_path, "wb") as f:
        f.write(plan)  # IHostMemory is a buffer: no copy of a multi-GB plan
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(cache_path, "wb") as f:
            f.write(config.get_timing_cache().serialize())
    return {"plan": plan_path.name, "precision": spec.precision,
            "profiles": [{n: [list(s) for s in trio] for n, trio in shapes.items()}
                         for shapes in spec.profiles],
            "fp32_layers": len(pinned), "num_layers": network.num_layers,
            "plan_bytes": plan_path.stat().st_size,
            "build_s": round(time.perf_counter() - t0, 1)}


def build_engines(profile, onnx_dir: str | Path, out_dir: str | Path, *, log=print,
                  workspace_gb: float = DEFAULT_WORKSPACE_GB) -> dict:
    """One plan per graph into out_dir, a shared timing cache, and engines.json (returned)."""
    paths = ArtifactPaths.of(onnx_dir, out_dir)
    manifest = check_build_input(paths.onnx_dir)
    specs = engine_specs(profile, manifest, paths)
    check_specs_cover(profile, specs, manifest)  # every size validation accepts must fit
    trt = _trt()
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("building TensorRT engines needs a CUDA device; torch sees none")
    graphs = {}
    for spec in specs:
        log(f"  building {spec.graph} ({spec.precision}, {len(spec.profiles)} optimisation "
            f"profile(s)) ...")
        info = build_plan(spec, paths.timing_cache, workspace_gb)
        log(f"  {spec.graph}: {info['build_s']} s, {info['plan_bytes'] / 2**20:.0f} MiB, "
            f"{info['fp32_layers']}/{info['num_layers']} layers pinned FP32")
        graphs[spec.graph] = info
    result = {"profile": profile.name, "preset": manifest["preset"],
              "weight_hash": manifest.get("weight_hash"), "tensorrt": trt.__version__,
              "gpu": torch.cuda.get_device_name(), "timing_cache": paths.timing_cache.name,
              "graphs": graphs}
    paths.engines_json.write_text(json.dumps(result, indent=2))
    return result
