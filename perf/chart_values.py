"""Helm values for deploy/helm/t2vserve from a deployment profile and a fleet size.

`t2vserve size ... --emit-values FILE` writes them, so the fleet the sizing computes and the
one the chart deploys come from one computation: replicas and the autoscaler's maximum are
the sized fleet, /dev/shm is what `serve` checks for the profile, the grace period covers
the supervisor's drain.
"""

import copy
from pathlib import Path

import yaml

from t2vserve.profile import Profile
from t2vserve.serve.server import shm_requirement

# the chart's preStop sleep, and the 60 s the supervisor gives Triton after its drain
PRE_STOP_SLEEP_S = 15
TRITON_STOP_S = 60
# below this a queue-time target scales on noise (a generation takes tens of seconds)
MIN_QUEUE_TARGET_MS = 1000.0
MODES = ("none", "keda", "hpa")


def chart_values(profile: Profile, fleet, *, mode: str = "keda", min_replicas: int = 1,
                 queue_time_target_ms: float | None = None) -> dict:
    """Values for `fleet` servers of `profile`, one GPU each.

    fleet: a perf.sizing.Sizing (its `servers`; the queue-time target defaults to its mean
    queue wait at peak) or a server count. The autoscaler runs between min_replicas and the
    fleet; a count with no target leaves the chart's default target."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    servers = fleet if isinstance(fleet, int) else getattr(fleet, "servers", None)
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
        raise ValueError(f"fleet must be a Sizing with servers >= 1 or a server count >= 1, "
                         f"got {fleet!r}")
    if not isinstance(min_replicas, int) or not 1 <= min_replicas <= servers:
        raise ValueError(f"min_replicas must be an integer from 1 to the fleet's {servers}, "
                         f"got {min_replicas!r}")
    if queue_time_target_ms is None and not isinstance(fleet, int):
        queue_time_target_ms = max(1000.0 * fleet.mean_wait_s, MIN_QUEUE_TARGET_MS)
    shm_bytes, _ = shm_requirement(profile)
    exit_timeout_s = int(profile.data["server"]["exit_timeout_s"])
    autoscaling = {"mode": mode, "minReplicas": min_replicas, "maxReplicas": servers}
    if queue_time_target_ms is not None:
        if queue_time_target_ms <= 0:
            raise ValueError(f"queue_time_target_ms must be > 0, got {queue_time_target_ms}")
        autoscaling["queueTimeTargetMs"] = round(float(queue_time_target_ms), 1)
    return {
        "replicas": servers,
        "gpusPerReplica": 1,
        "profile": copy.deepcopy(profile.data),
        "shmSizeBytes": shm_bytes,
        "preStopSleepSeconds": PRE_STOP_SLEEP_S,
        "terminationGracePeriodSeconds": PRE_STOP_SLEEP_S + exit_timeout_s + TRITON_STOP_S,
        "autoscaling": autoscaling,
    }


def write_values(values: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path
