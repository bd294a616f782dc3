"""RELIABILITY.md from the figures the reliability tests record (build/reliability/*.json).

    python -m t2vserve.perf.reliability_report build/reliability RELIABILITY.md
"""

import json
import platform
import sys
from pathlib import Path

CASES = [  # (file stem, title, the figures that make the row)
    ("fuzz", "Bad input, fuzzed", ("requests", "answers", "took_s", "good_request_after")),
    ("failure_isolation", "Failure inside one request", ("requests", "failed", "errors", "healthy_ok",
                                                         "healthy_bytes_equal_alone")),
    ("queue_full", "Queue full", ("requests", "rejected", "rejected_in_s", "succeeded",
                                  "triton_failure_metric_delta")),
    ("queue_timeout", "Queue timeout", ("rejected_after_s", "message", "triton_rejected_metric_delta")),
    ("priority", "Priority", ("completion_order",)),
    ("cancel", "Cancel mid-denoise", ("steps", "dit_calls_at_cancel", "dit_calls_after",
                                      "rss_before_mb", "rss_after_mb", "next_request")),
    ("stub_crash", "kill -9 of a stub under load", ("requests", "in_flight_ok", "failed",
                                                    "recovery_s", "in_flight_done_after_kill_s",
                                                    "longest_in_flight_s", "same_video_as_rerun",
                                                    "rerun_alone_s", "later_ok", "shm_segments_before",
                                                    "shm_segments_after")),
    ("sigterm", "SIGTERM under load", ("in_flight", "in_flight_ok", "readiness_false_after_s",
                                       "new_request", "exit_code", "longest_in_flight_s")),
    ("shm_undersized", "Shared memory too small", ("exit_code", "took_s", "message")),
    ("soak", "Soak", ("clients", "duration_s", "requests", "responses", "failures",
                      "byte_mismatches", "throughput_per_s", "p50_s", "p99_s",
                      "rss_after_warmup_mb", "rss_end_mb", "rss_growth_pct")),
]


def _cell(v) -> str:
    text = json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: Path) -> str:
    lines = [
        "# Reliability",
        "",
        "What was tried against a real tritonserver (`t2vserve serve`: Triton 2.51 under the "
        "supervisor, tiny preset, CPU), and what happened. Each row is one test in "
        "`tests/reliability/`, run with its own server and flags; `make soak` reruns all of "
        "them, the 10-minute soak included, and rewrites this file from the figures they "
        f"record. Machine: {platform.node()}, {platform.machine()}, Python "
        f"{platform.python_version()}.",
        "",
        "| case | what was done | figures | recorded |",
        "| --- | --- | --- | --- |",
    ]
    for stem, title, keys in CASES:
        path = results / f"{stem}.json"
        if not path.exists():
            lines.append(f"| {title} | not run | — | — |")
            continue
        r = json.loads(path.read_text())
        figures = "; ".join(f"{k}: {_cell(r[k])}" for k in keys if k in r)
        lines.append(f"| {title} | {_cell(r.get('what', ''))} | {figures} | {r.get('recorded', '')} |")
    lines += ["", "Notes", "",
              "- Queue full: Triton 2.51 answers UNAVAILABLE \"Exceeds maximum queue size\" at "
              "once but does not count these rejections in `nv_inference_request_failure` (the "
              "delta above); requests rejected by the queue timeout are counted (reason "
              "REJECTED). Count queue-full rejections at the client or the load balancer.",
              "- Stub crash: Triton 2.51 keeps a model with a dead stub READY and fails its "
              "requests (\"Stub process 'dit_0_0' is not healthy.\"); the supervisor finds "
              "the missing stub process, reloads the model through the token-restricted "
              "repository API and removes the dead stub's /dev/shm region, which Triton "
              "leaves behind. Meanwhile `t2v` retries the failed stage call (a DiT step, a "
              "VAE decode, an encode: all idempotent) with backoff for up to 60 s "
              "(`triton_io.STAGE_RETRY_S`), so its requests finish late instead of failing.",
              "- SIGTERM: Triton alone refuses the BLS calls of running requests once it is "
              "stopping; the supervisor unloads `t2v` and `t2v_stream` first, so running "
              "requests finish and new ones get NOT_FOUND \"no available versions\" (retried "
              "by the client).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if len(argv) != 2:
        print("usage: python -m t2vserve.perf.reliability_report RESULTS_DIR OUT.md", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(render(Path(argv[0])))
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
