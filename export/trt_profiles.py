"""TensorRT optimisation profiles (min/opt/max shape per graph input) from a deployment profile.

Pure Python, no TensorRT: the engine build, validation and the unit tests all read these.
Each graph's input shapes are written with named symbols (`batch`, `latent_frames`,
`2*half_latent_height`, cache axes like `4*latent_height`); a span (min, opt, max) is derived
per symbol from the profile's limits, defaults and batch sizes, and every input shape is
evaluated from its symbolic form. So a new VAE cache or a renamed graph needs no change here,
and the caches come out right by construction: they are the exporter's own expressions.

The shapes come from the export's manifest.json when there is one, or from the preset (the
VAE's cache layout read off a meta-device VAE, which allocates nothing), so profiles for the
5B model are available without exported 5B graphs.
"""

import ast
import json
import operator
from dataclasses import dataclass

from t2vserve.presets import Preset, get_preset

GRAPHS = ("text_encoder", "dit", "vae_decode_first", "vae_decode_step")
# which `components.*` / `models.*` entry of a profile governs each graph
COMPONENT = {"text_encoder": "text_encoder", "dit": "dit",
             "vae_decode_first": "vae_decoder", "vae_decode_step": "vae_decoder"}
DIT_OPT_BATCH = 2  # one request with classifier-free guidance: conditional + unconditional

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Span:
    """The (min, opt, max) a symbol takes in an optimisation profile."""
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv}


def evaluate(dim, values: dict[str, int]) -> int:
    """A dimension as written in a graph (an int, or an expression like '2*latent_height')."""
    if isinstance(dim, int):
        return dim
    try:
        tree = ast.parse(str(dim), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read dimension {dim!r}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise ValueError(f"dimension {dim!r} uses symbol {node.id!r}; known symbols: "
                                 f"{', '.join(sorted(values))}")
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"cannot evaluate dimension {dim!r}: only +, -, *, // of ints and symbols")

    return ev(tree)


def _frame_grid(lo: int, hi: int, stride: int) -> tuple[int, int]:
    first, last = lo + (1 - lo) % stride, hi - (hi - 1) % stride
    if first > last:
        raise ValueError(f"limits.num_frames: no {stride}k+1 value in [{lo}, {hi}]")
    return first, last


def _check_default_size(profile, limits) -> None:
    w, h = (profile.defaults[n] for n in ("width", "height"))
    for name, value in (("width", w), ("height", h)):
        if limits.size_error(name, value):
            raise ValueError(f"defaults.{name} {value} is not a size the limits allow: "
                             f"{limits.size_error(name, value)} (profile {profile.name})")
    if limits.pair_error(w, h):
        raise ValueError(f"defaults {w}x{h} is not a size the limits allow: "
                         f"{limits.pair_error(w, h)} (profile {profile.name})")


def symbol_spans(profile, preset: Preset, text_len: int,
                 size: tuple[int, int] | None = None) -> dict[str, dict[str, Span]]:
    """Per graph, the span of every symbol its input shapes use.

    Height and width span the sizes validation admits (`limits.sizes` where the profile
    lists them), so the max is the largest admitted size, not the corner of the ranges.
    `size` (width, height): the profile for that one admitted size (min = opt = max).
    """
    limits, defaults = profile.limits, profile.defaults
    spatial = preset.vae["scale_factor_spatial"]
    temporal = preset.vae["scale_factor_temporal"]
    patch = preset.dit["patch_size"][1]
    for name in ("width", "height"):
        if limits.multiple(name) % (spatial * patch):
            raise ValueError(f"limits.{name}.multiple {limits.multiple(name)} must be a multiple "
                             f"of {spatial * patch} (VAE stride {spatial} x DiT patch {patch})")
    if limits.prompt_tokens > text_len:
        raise ValueError(f"limits.prompt_tokens {limits.prompt_tokens} exceeds the text "
                         f"encoder's length {text_len}")

    _check_default_size(profile, limits)
    sizes = limits.admitted_sizes()
    if not sizes:
        raise ValueError(f"limits.width/height admit no size (profile {profile.name})")
    if size is not None:
        if tuple(size) not in sizes:
            raise ValueError(f"{size[0]}x{size[1]} is not a size profile {profile.name} admits")
        sizes, opt = [tuple(size)], tuple(size)
    else:
        opt = (defaults["width"], defaults["height"])

    def latent(axis: int) -> list[int]:  # min, opt, max over the sizes, in latent pixels
        values = [s[axis] for s in sizes]
        return [v // spatial for v in (min(values), opt[axis], max(values))]

    w, h = latent(0), latent(1)
    frames = _frame_grid(*limits.num_frames, temporal)
    n = defaults["num_frames"]
    if not frames[0] <= n <= frames[1] or (n - frames[0]) % temporal:
        raise ValueError(f"defaults.num_frames {n} is not a size the limits allow: "
                         f"{frames[0]}..{frames[1]} in steps of {temporal} "
                         f"(profile {profile.name})")
    latent_frames = Span(*[(f - 1) // temporal + 1 for f in (frames[0], n, frames[1])])

    for model in ("text_encoder", "dit"):
        if int(profile.model(model)["max_batch_size"]) < 1:
            raise ValueError(f"models.{model}.max_batch_size must be at least 1 for TensorRT "
                             f"engines, got {profile.model(model)['max_batch_size']}")
    te_batch = 2 * int(profile.model("text_encoder")["max_batch_size"])  # prompt + negative
    dit_batch = int(profile.model("dit")["max_batch_size"])
    fixed_len = Span(text_len, text_len, text_len)
    vae = {"batch": Span(1, 1, 1),  # the server decodes one sample per call
           "latent_height": Span(*h), "latent_width": Span(*w)}
    return {
        "text_encoder": {"batch": Span(1, min(2, te_batch), te_batch), "text_len": fixed_len},
        "dit": {"batch": Span(1, min(DIT_OPT_BATCH, dit_batch), dit_batch),
                "text_len": fixed_len, "latent_frames": latent_frames,
                "half_latent_height": Span(*[v // patch for v in h]),
                "half_latent_width": Span(*[v // patch for v in w])},
        "vae_decode_first": vae,
        "vae_decode_step": vae,
    }


_VAE_CACHES: dict[str, list[tuple[int, int]]] = {}


def _vae_cache_spec(preset: Preset) -> list[tuple[int, int]]:
    """(channels, spatial scale) per VAE cache, from a VAE built on the meta device."""
    key = json.dumps(preset.vae, sort_keys=True)
    if key not in _VAE_CACHES:
        import torch
        from diffusers import AutoencoderKLWan

        from t2vserve.export.vae_chunked import _cache_spec

        with torch.device("meta"):
            vae = AutoencoderKLWan(**preset.vae)
        _VAE_CACHES[key] = _cache_spec(vae)
    return _VAE_CACHES[key]


def preset_graphs(preset: Preset) -> dict:
    """The manifest's `graphs` section as the exporter writes it for this preset, without
    exporting: same tensor names and symbolic axes (checked against a real export in tests)."""
    from t2vserve.export.vae_chunked import CACHE_T, FRAMES_FIRST, FRAMES_STEP, cache_names

    def io(name, shape, dtype="FP32"):
        return {"name": name, "dtype": dtype, "shape": list(shape)}

    c = preset.latent_channels
    lat = ["batch", c, "latent_frames", "2*half_latent_height", "2*half_latent_width"]
    spec = _vae_cache_spec(preset)
    names = cache_names(len(spec))
    cache_shapes = [["batch", ch, CACHE_T, *(f"{s}*latent_{a}" if s > 1 else f"latent_{a}"
                                               for a in ("height", "width"))]
                    for ch, s in spec]
    z = io("latents", ["batch", c, 1, "latent_height", "latent_width"])

    stride = preset.vae["scale_factor_spatial"]

    def frames(n):
        return io("frames", ["batch", 3, n, f"{stride}*latent_height", f"{stride}*latent_width"])

    outs = [io(f"{n}_out", s) for n, s in zip(names, cache_shapes)]
    return {
        "text_encoder": {
            "inputs": [io("input_ids", ["batch", "text_len"], "INT64"),
                       io("attention_mask", ["batch", "text_len"], "INT64")],
            "outputs": [io("prompt_embeds",
                           ["batch", "text_len", preset.text_encoder["d_model"]])]},
        "dit": {
            "inputs": [io("latents", lat), io("timestep", ["batch"]),
                       io("prompt_embeds", ["batch", "text_len", preset.dit["text_dim"]])],
            "outputs": [io("noise_pred", lat)]},
        "vae_decode_first": {"inputs": [z], "outputs": [frames(FRAMES_FIRST), *outs]},
        "vae_decode_step": {"inputs": [z, *(io(n, s) for n, s in zip(names, cache_shapes))],
                            "outputs": [frames(FRAMES_STEP), *outs]},
    }


def _source(profile, manifest_or_preset) -> tuple[Preset, dict, int]:
    """(preset, graphs, text_len) from a manifest dict, a Preset, or the profile's preset."""
    wanted = profile.data["model"]["preset"]
    if isinstance(manifest_or_preset, dict):
        manifest = manifest_or_preset
        if manifest.get("preset") != wanted:
            raise ValueError(f"the export is of preset {manifest.get('preset')!r}, "
                             f"profile {profile.name} serves {wanted!r}")
        return get_preset(wanted), manifest["graphs"], int(manifest["text_len"])
    preset = manifest_or_preset or get_preset(wanted)
    if preset.name != wanted:
        raise ValueError(f"preset {preset.name!r} given, profile {profile.name} serves {wanted!r}")
    return preset, preset_graphs(preset), preset.text_len


def _shapes(graph: str, inputs: list[dict], spans: dict[str, Span]) -> dict:
    out = {}
    for t in inputs:
        trio = tuple(tuple(evaluate(d, {k: getattr(s, which) for k, s in spans.items()})
                           for d in t["shape"]) for which in ("min", "opt", "max"))
        for a, (lo, opt, hi) in enumerate(zip(*trio)):
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"{graph} input {t['name']} axis {a} ({t['shape'][a]!r}) "
                                 f"evaluates to min {lo}, opt {opt}, max {hi}")
        out[t["name"]] = trio
    return out


def optimisation_profiles(profile, manifest_or_preset: dict | Preset | None = None,
                          size: tuple[int, int] | None = None) -> dict:
    """{graph: {input: (min_shape, opt_shape, max_shape)}} for the four TensorRT graphs.

    `manifest_or_preset`: an export's manifest.json (dict), a Preset, or None for the
    profile's own preset. `size` (width, height): the profile of one admitted size; an
    engine with one optimisation profile per admitted size holds no activation memory for
    the box between them (832x832 where 832x480 and 480x832 are served).
    """
    preset, graphs, text_len = _source(profile, manifest_or_preset)
    spans = symbol_spans(profile, preset, text_len, size)
    missing = [g for g in GRAPHS if g not in graphs]
    if missing:
        raise ValueError(f"the manifest describes no graph {', '.join(missing)}")
    return {g: _shapes(g, graphs[g]["inputs"], spans[g]) for g in GRAPHS}


def request_shapes(profile, width: int, height: int, num_frames: int,
                   manifest_or_preset: dict | Preset | None = None) -> dict:
    """The input shapes one request gives each graph (batch 1; the batch range is the
    engine's own and does not depend on the request)."""
    preset, graphs, text_len = _source(profile, manifest_or_preset)
    spatial = preset.vae["scale_factor_spatial"]
    patch = preset.dit["patch_size"][1]
    h, w = height // spatial, width // spatial
    values = {"batch": 1, "text_len": text_len,
              "latent_frames": (num_frames - 1) // preset.vae["scale_factor_temporal"] + 1,
              "half_latent_height": h // patch, "half_latent_width": w // patch,
              "latent_height": h, "latent_width": w}
    return {g: {t["name"]: tuple(evaluate(d, values) for d in t["shape"])
                for t in graphs[g]["inputs"]} for g in GRAPHS}


def check_request_fits(profile, width: int, height: int, num_frames: int,
                       manifest_or_preset: dict | Preset | None = None,
                       profiles: dict | None = None) -> None:
    """Raise ValueError if a request of this size would fall outside the engines' profiles.

    For a size the profile's limits accept this never raises; build and tests call it to
    prove that. `profiles` skips recomputing optimisation_profiles in a loop.
    """
    profiles = profiles or optimisation_profiles(profile, manifest_or_preset)
    for graph, shapes in request_shapes(profile, width, height, num_frames,
                                        manifest_or_preset).items():
        for name, shape in shapes.items():
            lo, _, hi = profiles[graph][name]
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                raise ValueError(
                    f"{width}x{height}, {num_frames} frames: {graph} input {name} would be "
                    f"{list(shape)}, outside the engine profile min {list(lo)} max {list(hi)}")


def limit_corners(profile) -> list[tuple[int, int, int]]:
    """(width, height, num_frames) at every corner of the sizes the limits accept: each
    listed size, or the corners of the ranges, at the fewest and the most frames."""
    limits = profile.limits
    fs = _frame_grid(*limits.num_frames, 4)  # validation's rule: 4k+1 frames
    sizes = limits.admitted_sizes()
    if not limits.sizes and sizes:
        ws, hs = sorted({w for w, _ in sizes}), sorted({h for _, h in sizes})
        sizes = [(w, h) for w in (ws[0], ws[-1]) for h in (hs[0], hs[-1])]
    return [(w, h, f) for w, h in sizes for f in fs]
