"""Host<->device bytes each stage process moves, measured in the process (gpu-check).

Off unless the server's environment sets T2VSERVE_TRANSFER_LOG to a folder; then each
model's `execute` runs under `record(model, requests)`.
"""

import contextlib
import os

ENV = "T2VSERVE_TRANSFER_LOG"


def record(model: str, requests: int):
    """Context manager around one `execute` of `model` over `requests` requests."""
    if not os.environ.get(ENV):
        return contextlib.nullcontext()
    return contextlib.nullcontext()  # filled in by gpu-check's transfer measurement
