"""t2vserve's client: `from t2vserve.client import T2VClient, AsyncT2VClient`.

Installs without the server (`pip install t2vserve`); it never imports torch.
"""

from t2vserve.client.core import (
    QC_NAMES, AsyncT2VClient, Cancelled, DeadlineExceeded, InvalidRequest, Progress,
    QueueFull, RetryPolicy, ServerError, T2VClient, T2VDeadlineError, T2VError, Unavailable,
    Video, frames_for,
)

__all__ = ["QC_NAMES", "AsyncT2VClient", "Cancelled", "DeadlineExceeded", "InvalidRequest",
           "Progress", "QueueFull", "RetryPolicy", "ServerError", "T2VClient",
           "T2VDeadlineError", "T2VError", "Unavailable", "Video", "frames_for"]
