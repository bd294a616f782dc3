import math

import pytest

from t2vserve.schema import GenerationRequest, Limits, RequestValidationError


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


@pytest.mark.parametrize("width,height,message", [
    (832, 832, r"^height must be 480 for width 832 \(width x height one of 832x480, 480x832\), "
               r"got 832$"),
    (480, 480, r"^height must be 832 for width 480 "),
    (512, 480, r"^width must be one of 480, 832 \(width x height one of 832x480, 480x832\), "
               r"got 512$"),
    (864, 480, r"^width must be a multiple of 32 in \[480, 832\], got 864$"),  # the range first
])
def test_listed_sizes_admit_exactly_those_pairs(width, height, message):
    limits = Limits(width=(480, 832), height=(480, 832), sizes=((832, 480), (480, 832)))
    for w, h in limits.sizes:
        GenerationRequest(prompt="a red cup", width=w, height=h).validate(limits)
    with pytest.raises(RequestValidationError, match=message):
        GenerationRequest(prompt="a red cup", width=width, height=height).validate(limits)


def test_a_listed_size_outside_the_ranges_is_a_profile_error():
    with pytest.raises(ValueError, match=r"limits.sizes: 896x480 is outside limits.width/height: "
                                         r"width must be a multiple of 32 in \[480, 832\]"):
        Limits(width=(480, 832), height=(480, 832), sizes=((896, 480),))
