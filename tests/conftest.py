import os

import pytest

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without a GPU the Triton kernels of t2vserve.kernels run in Triton's CPU interpreter. Triton
# reads this when a kernel module is imported, so it is set here, before any test module
# (or the runtime it imports) can load one. Checked without importing torch.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset with its default weights, the ones `make serve` exports: the committed
    trained ones, else seeded random (the same object for the whole session). The served
    artifacts, the torch reference and the perf baseline must all hold the same weights."""
    from t2vserve.presets import build_components

    return build_components("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_artifacts(tiny, tmp_path_factory):
    """`t2vserve export --preset tiny` (FP32) into a temporary folder, once per session."""
    from t2vserve.export.onnx_export import export_preset

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    export_preset(tiny, out, precision="fp32")
    return out
