import math

import pytest

from t2vserve.schema import GenerationRequest, RequestValidationError


@pytest.mark.parametrize("field,value,message", [
    ("prompt", "  ", "prompt must be a non-empty"),
    ("width", 100, r"width must be a multiple of 32 in \[64, 256\], got 100"),
    ("height", 288, r"height must be a multiple of 32 in \[64, 256\], got 288"),
    ("num_frames", 16, r"num_frames must be 4k\+1 in \[5, 33\], got 16"),
    ("num_frames", 37, r"num_frames must be 4k\+1 in \[5, 33\], got 37"),
    ("steps", 0, r"steps must be in \[1, 50\], got 0"),
    ("guidance_scale", math.nan, r"guidance_scale must be finite in \[1.0, 20.0\]"),
    ("guidance_scale", math.inf, r"guidance_scale must be finite"),
    ("guidance_scale", -1.0, r"guidance_scale must be finite in \[1.0, 20.0\], got -1.0"),
    ("fps", 60, r"fps must be in \[8, 30\], got 60"),
])
def test_bad_input_names_the_allowed_range(field, value, message):
    request = GenerationRequest(**{"prompt": "a red cup", field: value})
    with pytest.raises(RequestValidationError, match=message):
        request.validate()


def test_defaults_are_valid():
    assert GenerationRequest(prompt="红色杯子").validate().num_frames == 17
