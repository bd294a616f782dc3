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
    """Inclusive ranges a request may ask for; the deployment profile sets them."""
    width: tuple[int, int] = (64, 256)
    height: tuple[int, int] = (64, 256)
    size_multiple: int = 32
    num_frames: tuple[int, int] = (5, 33)
    steps: tuple[int, int] = (1, 50)
    guidance_scale: tuple[float, float] = (1.0, 20.0)
    fps: tuple[int, int] = (8, 30)
    prompt_bytes: int = 4096
    prompt_tokens: int = 256


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
        for name in ("width", "height"):
            value, (lo, hi) = getattr(self, name), getattr(limits, name)
            if value % limits.size_multiple or not lo <= value <= hi:
                raise RequestValidationError(
                    f"{name} must be a multiple of {limits.size_multiple} in [{lo}, {hi}], "
                    f"got {value}")
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
