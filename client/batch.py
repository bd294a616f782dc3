"""`t2vserve batch`: a catalog (JSON lines of listings) -> clips + manifest.jsonl, resumable.

The manifest is an append-only log, one JSON line per attempt; the last line for a SKU is
its state. A rerun skips SKUs whose clip exists (ok or review) and retries failed ones.
Clips whose QC looks wrong (black, frozen, flickering) are kept and marked "review" for a
person to look at, never dropped.
"""

import hashlib
import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from t2vserve.client.core import T2VClient, T2VError
from t2vserve.client.listing import ListingError, listing_to_prompt

GENERATION_FIELDS = ("width", "height", "duration", "num_frames", "fps", "steps",
                     "guidance_scale", "negative_prompt")


@dataclass(frozen=True)
class QcPolicy:
    max_black_ratio: float = 0.5      # over half the frames black
    max_frozen_ratio: float = 0.9     # nothing moves in nine frames out of ten
    max_flicker: float = 12.0         # std of frame-to-frame mean-luma change, grey levels

    def review_reasons(self, qc: dict) -> list[str]:
        reasons = []
        if qc["black_frame_ratio"] > self.max_black_ratio:
            reasons.append(f"black ({qc['black_frame_ratio']:.0%} of frames)")
        if qc["frozen_frame_ratio"] > self.max_frozen_ratio:
            reasons.append(f"frozen ({qc['frozen_frame_ratio']:.0%} of frames)")
        if qc["temporal_flicker"] > self.max_flicker:
            reasons.append(f"flickering ({qc['temporal_flicker']:.1f})")
        return reasons


def sku_seed(sku: str) -> int:
    """A stable seed per SKU: the same listing gives the same clip on every run."""
    return int.from_bytes(hashlib.sha256(sku.encode("utf-8")).digest()[:4], "big")


def safe_name(sku: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sku).strip("._") or "sku"


def read_catalog(path: Path) -> list[tuple[int, dict | None, str | None]]:
    """(line number, listing or None, parse error or None) for each non-blank line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("a line must be a JSON object")
            rows.append((n, item, None))
        except ValueError as exc:
            rows.append((n, None, f"line {n}: {exc}"))
    return rows


def read_manifest(path: Path) -> dict[str, dict]:
    state = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                state[record["sku"]] = record
    return state


class Progress:
    """One status line: done/total, rate, ETA (a bar on a terminal, plain lines otherwise)."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.failed = total, 0, 0
        self.start, self.stream = time.monotonic(), stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 24
        bar = "#" * int(width * self.done / max(self.total, 1))
        line = (f"[{bar:<{width}}] {self.done}/{self.total} clips, {self.failed} failed, "
                f"{rate * 60:.1f} clips/min, ETA {eta:.0f} s")
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


def run_batch(catalog: Path, out_dir: Path, *, url: str, concurrency: int = 4,
              timeout: float | None = None, qc: QcPolicy = QcPolicy(), stream=sys.stderr) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.jsonl"
    state = read_manifest(manifest_path)
    lock = threading.Lock()
    jobs, skipped = [], 0
    for n, item, error in read_catalog(catalog):
        sku = str((item or {}).get("sku") or f"line-{n}")
        done = state.get(sku)
        if done and done["status"] in ("ok", "review") and (out_dir / done["path"]).exists():
            skipped += 1
            continue
        jobs.append((sku, item, error))

    def record(entry: dict) -> None:
        with lock:
            with open(manifest_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def one(client: T2VClient, sku: str, item: dict | None, error: str | None) -> dict:
        entry = {"sku": sku, "prompt": None, "seed": None, "path": None, "qc": None,
                 "latency_s": None, "status": "failed", "error": error, "warnings": []}
        if item is None:
            return entry
        t0 = time.monotonic()
        try:
            if item.get("prompt"):
                prompt, warnings = str(item["prompt"]), []
            else:
                lp = listing_to_prompt(item)
                prompt, warnings = lp.prompt, list(lp.warnings)
            seed = int(item["seed"]) if "seed" in item else sku_seed(sku)
            entry.update(prompt=prompt, seed=seed, warnings=warnings)
            params = {k: item[k] for k in GENERATION_FIELDS if k in item}
            video = client.generate(prompt, seed=seed, timeout=timeout, **params)
            path = f"{safe_name(sku)}.mp4"
            (out_dir / path).write_bytes(video.mp4)
            reasons = qc.review_reasons(video.qc)
            entry.update(path=path, qc=video.qc, error=None,
                         status="review" if reasons else "ok", review=reasons)
        except (ListingError, T2VError, ValueError, TypeError) as exc:
            entry["error"] = str(exc)
        entry["latency_s"] = round(time.monotonic() - t0, 3)
        return entry

    progress = Progress(len(jobs), stream)
    summary = {"skipped": skipped, "ok": 0, "review": 0, "failed": 0}
    local = threading.local()
    clients = []

    def worker(job):
        if not hasattr(local, "client"):
            local.client = T2VClient(url)
            with lock:
                clients.append(local.client)
        return one(local.client, *job)

    try:
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            for future in as_completed([pool.submit(worker, job) for job in jobs]):
                entry = future.result()
                record(entry)
                summary[entry["status"]] += 1
                progress.update(entry["status"] == "failed")
    finally:
        progress.close()
        for c in clients:
            c.close()
    summary["manifest"] = str(manifest_path)
    return summary
