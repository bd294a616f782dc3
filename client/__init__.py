"""t2vserve's client: `from t2vserve.client import T2VClient, AsyncT2VClient`."""

from t2vserve.client.core import (
    QC_NAMES, AsyncT2VClient, RetryPolicy, T2VClient, T2VDeadlineError, T2VError, Video,
    frames_for,
)

__all__ = ["QC_NAMES", "AsyncT2VClient", "RetryPolicy", "T2VClient", "T2VDeadlineError",
           "T2VError", "Video", "frames_for"]
