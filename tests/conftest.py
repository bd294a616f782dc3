import os

import pytest

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset with seeded random weights (the same object for the whole session)."""
    from t2vserve.presets import build_components

    return build_components("tiny", seed=0)
