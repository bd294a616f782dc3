"""t2vserve's client: `from t2vserve.client import T2VClient`."""

from t2vserve.client.core import QC_NAMES, T2VClient, T2VError, Video

__all__ = ["QC_NAMES", "T2VClient", "T2VError", "Video"]
