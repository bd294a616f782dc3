"""How a request is sampled: a profile's model variants, each with its sampling mode, its
guidance schedule and its step cache. No torch here: the loop (`pipeline.denoise_loop`) asks
these objects what to do at each step.

A profile's `variants:` maps names to variants; the first is the default. Without the section
there is one variant, `base`: the exported model, sampled as the request asks. A variant:

    name:
      lora: ["asset:tiny-distilled/lora.safetensors:1.0"]  # fused into its own DiT (dit_<name>)
      sampling: asset:tiny-distilled/sampling.json       # or the mapping inline:
      #   mode: few_step, steps: 4, sigmas: [..., 0.0], guidance_scale: 1.0, map_request: false
      guidance_interval: [0.0, 0.5]   # CFG on the first half of the steps only (base mode)
      cache: {threshold: 0.1, max_skips: 2}   # step cache (base mode), calibrated per DiT

Modes. `base`: the profile's scheduler at the request's steps and guidance, as before.
`few_step`: Euler over the variant's fixed sigma list, one conditional DiT pass per step (no
CFG); a request asking other steps or guidance is refused naming what the variant samples,
or mapped to it where `map_request` is true.

The step cache (output-level, MagCache-like). A calibration (`t2vserve calibrate-cache`)
records the mean log-magnitude of the guided prediction over the timesteps for one DiT's
weights. At a step, the magnitude ratio to the previous step is read off that curve; while
the accumulated |1 - ratio| stays under the threshold, at most `max_skips` steps in a row,
and never at the first or last step, the loop reuses the previous prediction scaled by the
ratio instead of calling the DiT. Output-level reuse works with any runner (ONNX Runtime,
TensorRT, torch), since it needs nothing inside the DiT. The state is per request.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2vserve.schema import RequestValidationError

MODES = ("base", "few_step")
ASSETS = Path(__file__).parent / "assets"


def resolve_path(profile, value: str) -> Path:
    """`asset:<path>` (inside the package's assets) or a path relative to the profile root."""
    if value.startswith("asset:"):
        return ASSETS / value[len("asset:"):]
    return profile.resolve(value)


@dataclass(frozen=True)
class CacheCurve:
    """Mean log ||prediction|| against the timestep, for one DiT's weights."""
    timesteps: tuple[float, ...]  # increasing
    log_norm: tuple[float, ...]
    weight_hash: str
    meta: dict = field(default_factory=dict, compare=False)

    def ratio(self, t_from: float, t_to: float) -> float:
        m = np.interp([t_from, t_to], self.timesteps, self.log_norm)
        return float(math.exp(m[1] - m[0]))

    def to_json(self) -> dict:
        return {"weight_hash": self.weight_hash, "timesteps": list(self.timesteps),
                "log_norm": list(self.log_norm), **self.meta}

    @classmethod
    def load(cls, path: Path, weight_hash: str) -> "CacheCurve":
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `t2vserve calibrate-cache` for "
                                    f"this model before enabling a step cache")
        data = json.loads(path.read_text())
        if data.get("weight_hash") != weight_hash:
            raise ValueError(f"{path} was calibrated for weights {data.get('weight_hash')!r:.20}"
                             f", not these ({weight_hash[:12]}...): run `t2vserve "
                             f"calibrate-cache` again for this model")
        order = np.argsort(data["timesteps"])
        meta = {k: v for k, v in data.items() if k not in ("weight_hash", "timesteps", "log_norm")}
        return cls(tuple(float(data["timesteps"][i]) for i in order),
                   tuple(float(data["log_norm"][i]) for i in order), weight_hash, meta)


@dataclass(frozen=True)
class StepCache:
    threshold: float
    max_skips: int
    curve: CacheCurve | None = None  # attached once the artifacts are known

    def state(self) -> "CacheState":
        if self.curve is None:
            raise RuntimeError("step cache has no calibration curve attached")
        return CacheState(self)


class CacheState:
    """One request's step cache: decides, step by step, whether to reuse."""

    def __init__(self, cache: StepCache):
        self.cache, self.err, self.skips, self.skipped = cache, 0.0, 0, []

    def reuse(self, i: int, steps: int, t_prev: float | None, t: float) -> float | None:
        """The ratio to scale the previous prediction by, or None to call the DiT."""
        if t_prev is None or i == steps - 1 or self.skips >= self.cache.max_skips:
            self.err, self.skips = 0.0, 0
            return None
        ratio = self.cache.curve.ratio(t_prev, t)
        err = self.err + abs(1.0 - ratio)
        if err > self.cache.threshold:
            self.err, self.skips = 0.0, 0
            return None
        self.err, self.skips = err, self.skips + 1
        self.skipped.append(i)
        return ratio


@dataclass(frozen=True)
class Sampling:
    mode: str = "base"
    steps: int | None = None            # few_step: the only step count
    sigmas: tuple[float, ...] | None = None  # few_step: s_0 > ... > s_{n-1} > 0, then 0
    guidance_scale: float | None = None  # few_step: the only guidance
    map_request: bool = False
    guidance_interval: tuple[float, float] | None = None  # fraction of steps with CFG
    cache: StepCache | None = None

    def cfg_at(self, i: int, steps: int) -> bool:
        if self.guidance_interval is None:
            return True
        start, end = self.guidance_interval
        return start * steps <= i < end * steps

    def describe(self) -> str:
        if self.mode == "few_step":
            return (f"few-step: exactly {self.steps} steps at guidance_scale "
                    f"{self.guidance_scale:g}")
        return "base"


@dataclass(frozen=True)
class Variant:
    name: str
    dit_model: str                      # the Triton model its DiT calls go to
    loras: tuple[str, ...] = ()
    sampling: Sampling = Sampling()

    def request_steps_guidance(self, steps: int | None, guidance: float | None,
                               defaults: dict) -> tuple[int, float]:
        """The steps and guidance this request runs: its own (or the profile's defaults) in
        base mode; the variant's in few-step mode, where asking for others is refused (or
        mapped, with map_request)."""
        s = self.sampling
        if s.mode != "few_step":
            return (defaults["steps"] if steps is None else steps,
                    defaults["guidance_scale"] if guidance is None else guidance)
        off = []
        if steps is not None and steps != s.steps:
            off.append(f"steps={steps}")
        if guidance is not None and abs(guidance - s.guidance_scale) > 1e-6:
            off.append(f"guidance_scale={guidance:g}")
        if off and not s.map_request:
            raise RequestValidationError(
                f"model_variant {self.name!r} samples {s.describe()} (no CFG); got "
                f"{', '.join(off)}: omit them or send steps={s.steps}, guidance_scale="
                f"{s.guidance_scale:g}")
        return s.steps, s.guidance_scale


BASE = Variant("base", "dit")


def _sampling(profile, name: str, spec: dict) -> Sampling:
    raw = spec.get("sampling") or {}
    if isinstance(raw, str):
        raw = json.loads(resolve_path(profile, raw).read_text())
    where = f"variants.{name}"
    mode = raw.get("mode", "base")
    if mode not in MODES:
        raise ValueError(f"{where}.sampling.mode must be one of {', '.join(MODES)}, got {mode!r}")
    kwargs = {"mode": mode}
    if mode == "few_step":
        sigmas = tuple(float(x) for x in raw.get("sigmas") or ())
        steps = int(raw.get("steps", len(sigmas) - 1))
        if (len(sigmas) != steps + 1 or sigmas[-1] != 0.0
                or any(a <= b for a, b in zip(sigmas, sigmas[1:])) or not sigmas[0] <= 1.0):
            raise ValueError(f"{where}.sampling.sigmas must be {steps} decreasing values in "
                             f"(0, 1] and a final 0.0, got {list(sigmas)}")
        kwargs.update(steps=steps, sigmas=sigmas,
                      guidance_scale=float(raw.get("guidance_scale", 1.0)),
                      map_request=bool(raw.get("map_request", False)))
        if spec.get("cache") or spec.get("guidance_interval"):
            raise ValueError(f"{where}: cache and guidance_interval apply to base mode only")
    interval = spec.get("guidance_interval")
    if interval is not None:
        if (not isinstance(interval, (list, tuple)) or len(interval) != 2
                or not 0.0 <= float(interval[0]) < float(interval[1]) <= 1.0):
            raise ValueError(f"{where}.guidance_interval must be [start, end] fractions with "
                             f"0 <= start < end <= 1, got {interval!r}")
        kwargs["guidance_interval"] = (float(interval[0]), float(interval[1]))
    cache = spec.get("cache")
    if cache is not None:
        threshold, skips = float(cache.get("threshold", -1)), cache.get("max_skips", 2)
        if not threshold > 0 or not isinstance(skips, int) or skips < 1:
            raise ValueError(f"{where}.cache needs threshold > 0 and max_skips >= 1, got "
                             f"{cache!r}")
        kwargs["cache"] = StepCache(threshold, skips)
    return Sampling(**kwargs)


def variants_of(profile) -> dict[str, Variant]:
    """The profile's variants in order (the first is the default)."""
    spec = profile.data.get("variants")
    if not spec:
        return {BASE.name: BASE}
    if not isinstance(spec, dict):
        raise ValueError(f"variants must map names to variants, got {type(spec).__name__}")
    out = {}
    for name, body in spec.items():
        if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
            raise ValueError(f"variant name {name!r}: use letters, digits, '-' and '_'")
        body = body or {}
        loras = tuple(body.get("lora") or ())
        dit = f"dit_{name.replace('-', '_')}" if loras else "dit"
        out[name] = Variant(name, dit, loras, _sampling(profile, name, body))
    return out


def variant_dir(profile, variant: Variant) -> Path:
    """Where a variant's own DiT export lives (the base's artifacts when it has no LoRA)."""
    return profile.artifacts / "variants" / variant.name if variant.loras else profile.artifacts


def calibration_path(profile, variant: Variant) -> Path:
    return variant_dir(profile, variant) / "cache_calibration.json"
