import pytest


@pytest.fixture(scope="session")
def fp16_artifacts(tiny, tmp_path_factory):
    """`t2vserve export --preset tiny --precision fp16` into a temporary folder, once per
    session (test_export's FP16 check and the TensorRT build-input tests share it)."""
    from t2vserve.export.onnx_export import export_preset

    out = tmp_path_factory.mktemp("artifacts") / "tiny-fp16"
    export_preset(tiny, out, precision="fp16")
    return out
