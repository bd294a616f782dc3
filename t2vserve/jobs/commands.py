"""`t2vserve jobs` (the API), `jobs-worker`, `jobs-key`, `jobs-local` (`make jobs`), `redis`."""

import os
from pathlib import Path

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_STORAGE = "build/jobs/storage"


def _secret() -> bytes:
    return os.environ.get("T2V_WEBHOOK_SECRET", "").encode("utf-8")


def _jobs(args) -> int:
    from t2vserve.jobs.api import JobsConfig, serve
    from t2vserve.jobs.auth import load_keys
    from t2vserve.jobs.records import Limits

    config = JobsConfig(redis_url=args.redis, storage_url=args.storage, triton_url=args.url,
                        keys=load_keys(Path(args.keys) if args.keys else None),
                        limits=Limits(args.rate_per_minute, args.max_active_jobs),
                        webhooks_enabled=bool(_secret()),
                        allow_private_webhooks=args.allow_private_webhooks)
    serve(config, args.host, args.port)
    return 0


def _worker(args) -> int:
    from t2vserve.jobs.worker import ServerSpec, WorkerConfig, run_worker

    config = WorkerConfig(redis_url=args.redis, storage_url=args.storage,
                          servers=[ServerSpec.parse(s) for s in args.server or ["127.0.0.1:8001"]],
                          heartbeat_timeout_ms=args.heartbeat_timeout_ms,
                          webhook_secret=_secret(),
                          allow_private_webhooks=args.allow_private_webhooks,
                          webhook_attempts=args.webhook_attempts,
                          webhook_backoff_s=_backoff(args.webhook_backoff))
    run_worker(config, args.threads)
    return 0


def _backoff(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--webhook-backoff is seconds separated by commas, got {text!r}")
    if not values or any(not 0 <= v <= 3600 for v in values):
        raise SystemExit(f"--webhook-backoff values must be in [0, 3600] s, got {text!r}")
    return values


def _key(args) -> int:
    from t2vserve.jobs.auth import _owner, hash_key, new_key

    owner = _owner(args.owner, "--owner")
    key = new_key()
    print(f"API key for {owner} (shown once; send it as Authorization: Bearer <key>):\n  {key}")
    print(f"line for the keys file (t2vserve jobs --keys FILE):\n  {owner} sha256:{hash_key(key)}")
    return 0


def _redis(args) -> int:
    from t2vserve.jobs.redis_server import run_foreground

    return run_foreground(Path(args.dir), args.port)


def _local(args) -> int:
    from t2vserve.jobs.local import run

    return run(server=args.server, host=args.host, port=args.port, redis_port=args.redis_port,
               folder=Path(args.dir), workers=args.workers)


def register(sub) -> None:
    p = sub.add_parser("jobs", help="the async jobs API (/v1/videos) on Redis; workers generate")
    p.add_argument("--redis", default=DEFAULT_REDIS, help=f"Redis URL ({DEFAULT_REDIS})")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="where clips are stored: a directory, file:///dir or "
                        "s3://bucket/prefix?endpoint_url=...&region=...")
    p.add_argument("--url", default="127.0.0.1:8001",
                   help="Triton gRPC host:port for the synchronous POST /t2v/generate")
    p.add_argument("--keys", help="API keys file (`<owner> sha256:<hex>` lines); T2V_API_KEY "
                   "and T2V_API_KEYS (owner=key,...) add keys from the environment")
    p.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--rate-per-minute", type=int, default=600,
                   help="POST /v1/videos per API key per minute (600); more get 429")
    p.add_argument("--max-active-jobs", type=int, default=1000,
                   help="queued + running jobs per API key (1000); more get 429")
    p.add_argument("--allow-private-webhooks", action="store_true",
                   help="accept webhook URLs on loopback/private/link-local addresses")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("jobs-worker", help="a jobs worker: runs queued /v1/videos jobs on "
                       "Triton servers, stores the clips, sends the webhooks")
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--server", action="append", metavar="HOST:PORT[=N]",
                   help="a Triton gRPC server and how many generations it takes at once "
                        "(default 127.0.0.1:8001=2); repeat for several")
    p.add_argument("--threads", type=int, help="actor threads (default: the servers' total concurrency)")
    p.add_argument("--heartbeat-timeout-ms", type=int, default=5000,
                   help="a worker silent this long is dead and its jobs go to another (5000)")
    p.add_argument("--allow-private-webhooks", action="store_true")
    p.add_argument("--webhook-attempts", type=int, default=5,
                   help="deliveries tried per event (5); signed with T2V_WEBHOOK_SECRET")
    p.add_argument("--webhook-backoff", default="1,2,4,8",
                   help="seconds between webhook attempts (1,2,4,8; the last repeats)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("jobs-key", help="make an API key for the jobs API (prints it once, "
                       "and the hashed line for the keys file)")
    p.add_argument("--owner", default="default")
    p.set_defaults(func=_key)

    p = sub.add_parser("jobs-local", help="Redis + a worker + the jobs API on this machine, "
                       "against a running server (`make jobs`); Ctrl-C stops all")
    p.add_argument("--server", default="127.0.0.1:8001=2", metavar="HOST:PORT[=N]",
                   help="the Triton gRPC server the worker uses (127.0.0.1:8001=2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--dir", default="build/jobs", help="Redis AOF and stored clips (build/jobs)")
    p.set_defaults(func=_local)

    p = sub.add_parser("redis", help="Redis for the jobs queue on 127.0.0.1, AOF on, in the "
                       "foreground (Ctrl-C stops)")
    p.add_argument("--dir", default="build/jobs/redis", help="its data directory (AOF)")
    p.add_argument("--port", type=int, default=6379)
    p.set_defaults(func=_redis)
