"""What a generation request is, and how it is checked before any heavy work.

Pure Python: the Triton models, the client and the in-process pipeline share it.
"""

import math
from dataclasses import dataclass

from t2vserve.text_corpus import WAN_DEFAULT_NEGATIVE_PROMPT


class RequestValidationError(ValueError):
    """Bad input from the caller; becomes Triton INVALID_ARG / HTTP 400."""


@dataclass(frozen=True)
class Limits:
    """Inclusive ranges a request may ask for; the deployment profile sets them.

    `sizes`, when given, lists the (width, height) pairs a request may ask for: engines,
    VAE caches and shared memory are then sized for those, not for the corner of the ranges
    (which would admit 1280x1280 where 1280x704 and 704x1280 are meant).
    """
    width: tuple[int, int] = (64, 256)
    height: tuple[int, int] = (64, 256)
    width_multiple: int = 32
    height_multiple: int = 32
    num_frames: tuple[int, int] = (5, 33)
    steps: tuple[int, int] = (1, 50)
    guidance_scale: tuple[float, float] = (1.0, 20.0)
    fps: tuple[int, int] = (8, 30)
    prompt_bytes: int = 4096
    prompt_tokens: int = 256
    sizes: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        for w, h in self.sizes:  # a listed size the ranges refuse could never be asked for
            error = self.size_error("width", w) or self.size_error("height", h)
            if error:
                raise ValueError(f"limits.sizes: {w}x{h} is outside limits.width/height: {error}")

    def multiple(self, name: str) -> int:
        return getattr(self, f"{name}_multiple")

    def size_error(self, name: str, value: int) -> str | None:
        """The message refusing `value` as `name` (width or height) by its range, or None."""
        (lo, hi), m = getattr(self, name), self.multiple(name)
        if value % m or not lo <= value <= hi:
            return f"{name} must be a multiple of {m} in [{lo}, {hi}], got {value}"
        return None

    def pair_error(self, width: int, height: int) -> str | None:
        """The message refusing width x height as a pair not in `sizes`, or None."""
        if not self.sizes or (width, height) in self.sizes:
            return None
        listed = f"(width x height one of {', '.join(f'{w}x{h}' for w, h in self.sizes)})"
        heights = [h for w, h in self.sizes if w == width]
        if not heights:  # messages start with the field, so clients can name it
            widths = ", ".join(str(w) for w in sorted({w for w, _ in self.sizes}))
            return f"width must be one of {widths} {listed}, got {width}"
        return (f"height must be {' or '.join(map(str, heights))} for width {width} {listed}, "
                f"got {height}")

    def admits(self, width: int, height: int) -> bool:
        return not (self.size_error("width", width) or self.size_error("height", height)
                    or self.pair_error(width, height))

    def admitted_sizes(self) -> list[tuple[int, int]]:
        """Every (width, height) validation lets through."""
        if self.sizes:
            return list(self.sizes)
        axes = [range(-(-lo // m) * m, hi + 1, m) for (lo, hi), m in
                ((self.width, self.width_multiple), (self.height, self.height_multiple))]
        return [(w, h) for w in axes[0] for h in axes[1]]

    def largest_clip(self) -> tuple[int, int, int]:
        """(width, height, num_frames) of the biggest clip validation lets through."""
        w, h = max(self.admitted_sizes(), key=lambda s: (s[0] * s[1], s))
        lo, hi = self.num_frames
        return w, h, hi - (hi - 1) % 4


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = WAN_DEFAULT_NEGATIVE_PROMPT
    width: int = 128
    height: int = 128
    num_frames: int = 17
    fps: int = 24
    steps: int = 8
    guidance_scale: float = 5.0
    seed: int = 0

    def validate(self, limits: Limits = Limits()) -> "GenerationRequest":
        """Raise RequestValidationError naming the allowed range; return self if valid."""
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise RequestValidationError(f"{name} must be a UTF-8 string")
            if len(text.encode("utf-8")) > limits.prompt_bytes:
                raise RequestValidationError(
                    f"{name} must be at most {limits.prompt_bytes} bytes of UTF-8, "
                    f"got {len(text.encode('utf-8'))}")
        if not self.prompt.strip():
            raise RequestValidationError("prompt must be a non-empty UTF-8 string")
        error = (limits.size_error("width", self.width) or limits.size_error("height", self.height)
                 or limits.pair_error(self.width, self.height))
        if error:
            raise RequestValidationError(error)
        lo, hi = limits.num_frames
        if (self.num_frames - 1) % 4 or not lo <= self.num_frames <= hi:
            raise RequestValidationError(
                f"num_frames must be 4k+1 in [{lo}, {hi}], got {self.num_frames}")
        for name in ("steps", "fps"):
            value, (lo, hi) = getattr(self, name), getattr(limits, name)
            if not lo <= value <= hi:
                raise RequestValidationError(f"{name} must be in [{lo}, {hi}], got {value}")
        g, (lo, hi) = self.guidance_scale, limits.guidance_scale
        if not math.isfinite(g) or not lo <= g <= hi:
            raise RequestValidationError(
                f"guidance_scale must be finite in [{lo}, {hi}], got {g}")
        if not -(2**63) <= self.seed < 2**63:
            raise RequestValidationError("seed must fit in INT64")
        return self

    def check_tokens(self, name: str, count: int, limits: Limits) -> None:
        if count > limits.prompt_tokens:
            raise RequestValidationError(
                f"{name} is {count} tokens; the text encoder takes at most "
                f"{limits.prompt_tokens} (including the end token)")
