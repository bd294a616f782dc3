"""`t2vserve batch`: a catalog (JSON lines of listings) -> clips + manifest.jsonl, resumable.

The manifest is an append-only log, one JSON line per attempt; the last line for a SKU is
its state (a line reporting a duplicate catalog line carries `duplicate_of` and is not).
A rerun skips a SKU only when its clip exists with the byte size and sha256 its record
gives, and generates the rest again. Clips are written under a temporary name, fsynced and
renamed, so a killed run never leaves a partial clip under a final name. Clips whose QC
looks wrong (black, frozen, flickering) are kept and marked "review" for a person to look
at, never dropped.
"""

import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from t2vserve.client.compliance import check_prompt, default_rules
from t2vserve.client.core import T2VClient, T2VError
from t2vserve.client.experiment import ExperimentError, assign, split_text
from t2vserve.client.listing import ListingError, listing_to_prompt

GENERATION_FIELDS = ("width", "height", "duration", "num_frames", "fps", "steps",
                     "guidance_scale", "negative_prompt")
MAX_NAME = 100  # characters of the SKU kept in a file name; longer ones get a hash
_TEMP = re.compile(r"^\..+\.mp4\.(?P<pid>\d+)\.tmp$")


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
    rows: list[tuple[int, dict | None, str | None]] = []
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
    """Each SKU's state: its last record, records of duplicate catalog lines aside."""
    state: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a run killed mid-append: that attempt is lost
            if isinstance(record, dict) and "sku" in record and "duplicate_of" not in record:
                state[state_key(record["sku"], record.get("variant"))] = record
    return state


def state_key(sku: str, variant: str | None = None):
    """What a manifest record is the state of: the SKU, or (SKU, variant) in an experiment."""
    return sku if variant is None else (sku, variant)


def resolve_prompt(item: dict) -> tuple[str, list[str]]:
    """The line's own `prompt` when it has the key (never a silent fallback when it is
    blank), else one made from the listing fields; and the listing's warnings. Not yet
    checked for compliance (plan_batch checks both kinds alike)."""
    if "prompt" not in item:
        made = listing_to_prompt(item, check=False)
        return made.prompt, list(made.warnings)
    prompt = item["prompt"]
    if prompt is None:
        raise ValueError("prompt is empty (null); leave the key out to build the prompt "
                         "from the listing fields")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty" if not prompt else "prompt is blank (whitespace only)")
    return prompt, []


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clip_is_done(out_dir: Path, record: dict | None) -> bool:
    """The record says ok/review and the file is the one it describes, byte for byte (a
    record from before sizes and hashes were kept does not count)."""
    if not record or record.get("status") not in ("ok", "review") or not record.get("path"):
        return False
    path = out_dir / record["path"]
    try:
        if path.stat().st_size != record.get("bytes"):
            return False
    except OSError:
        return False
    return sha256_file(path) == record.get("sha256")


def assign_names(skus: list, previous: dict) -> dict:
    """(file name or None, why it is not `<sku>.mp4`) per SKU (or per (SKU, variant):
    `<sku>.<variant>.mp4`). A name is never one another SKU holds in this catalog or in the
    manifest, compared case-insensitively (macOS and Windows disks). A SKU keeps the name its
    last record gave it; otherwise its own name when that is a safe file name and free, else
    that name with a hash of the SKU."""
    holders = Counter(r["path"].casefold() for r in previous.values() if r.get("path"))
    taken = {r["path"].casefold(): sku for sku, r in previous.items()
             if r.get("path") and holders[r["path"].casefold()] == 1}
    names: dict[str, tuple[str | None, str | None]] = {}
    for sku in skus:
        old = (previous.get(sku) or {}).get("path")
        if old and taken.get(old.casefold()) == sku:
            names[sku] = (old, None)
            continue
        own, variant = (sku, None) if isinstance(sku, str) else sku
        base = safe_name(own)[:MAX_NAME]
        plain = f"{base}.mp4" if variant is None else f"{base}.{variant}.mp4"
        hashed = f"{base}-{hashlib.sha256(own.encode('utf-8')).hexdigest()[:8]}" + plain[len(base):]
        if base == own and plain.casefold() not in taken:
            choice, why = plain, None
        elif hashed.casefold() not in taken:
            choice = hashed
            why = (f"file name {hashed}: " + (f"{plain} is taken by sku {taken[plain.casefold()]!r}"
                   if base == own else f"sku {own!r} is not a safe file name"))
        else:
            names[sku] = (None, f"file names {plain} and {hashed} are both taken by other SKUs")
            continue
        taken[choice.casefold()] = sku
        names[sku] = (choice, why)
    return names


@dataclass
class Job:
    line: int
    sku: str
    prompt: str | None = None
    seed: int | None = None
    params: dict = field(default_factory=dict)
    path: str | None = None            # file name in the output folder
    warnings: list[str] = field(default_factory=list)
    error: str | None = None           # set: recorded failed, nothing sent
    duplicate_of: int | None = None    # the line where this SKU first appeared
    done: bool = False                 # its clip is already there, as recorded
    compliance: dict | None = None     # the prompt's compliance check (Check.to_dict())
    variant: str | None = None         # the model variant an experiment gave it
    experiment: dict | None = None     # {"experiment": name, "split": "a=0.5,b=0.5" or "all"}

    @property
    def key(self):
        return state_key(self.sku, self.variant)

    def record(self) -> dict:
        entry = {"sku": self.sku, "line": self.line, "prompt": self.prompt, "seed": self.seed,
                 "path": None, "bytes": None, "sha256": None, "qc": None, "latency_s": None,
                 "status": "failed", "error": self.error, "warnings": list(self.warnings),
                 "compliance": self.compliance}
        if self.variant is not None:
            entry.update(variant=self.variant, **(self.experiment or {}))
        if self.duplicate_of is not None:
            entry["duplicate_of"] = self.duplicate_of
        return entry


@dataclass(frozen=True)
class Arms:
    """The model variants an experiment renders per SKU: the one a hash of the experiment's
    name and the SKU picks under `split`, or, without a split, every one of `variants`."""
    experiment: str
    variants: tuple[str, ...]
    split: dict[str, float] | None = None

    @property
    def meta(self) -> dict:
        return {"experiment": self.experiment,
                "split": split_text(self.split) if self.split else "all"}

    def of(self, sku: str) -> list[str]:
        return [assign(self.experiment, sku, self.split)] if self.split else list(self.variants)

    def check_manifest(self, previous: dict, path: Path) -> None:
        """A rerun must keep the assignment: refuse a manifest of another experiment or split."""
        for record in previous.values():
            if record.get("variant") is None:
                continue
            theirs = {k: record.get(k) for k in ("experiment", "split")}
            if theirs != self.meta:
                raise ExperimentError(
                    f"{path} holds experiment {theirs['experiment']!r} (split "
                    f"{theirs['split']}); this run is {self.meta['experiment']!r} (split "
                    f"{self.meta['split']}): rerun with the same --experiment and --variants "
                    "(or --all-variants), or use another --out-dir")

    def expand(self, jobs: list[Job], previous: dict, out_dir: Path) -> list[Job]:
        """Each line's job once per variant it gets (a duplicate line's stays one)."""
        out = []
        for job in jobs:
            if job.duplicate_of is not None:
                out.append(job)
                continue
            for v in self.of(job.sku):
                arm = replace(job, variant=v, experiment=self.meta, warnings=list(job.warnings),
                              params={**job.params, "model_variant": v})
                arm.done = job.error is None and clip_is_done(out_dir, previous.get(arm.key))
                out.append(arm)
        return out


def plan_batch(rows: list[tuple[int, dict | None, str | None]], previous: dict,
               out_dir: Path, arms: Arms | None = None) -> list[Job]:
    """One job per catalog line (per line and variant with `arms`): done (skip), failed
    before any request (parse error, duplicate SKU, bad prompt or seed), or to generate
    under a file name of its own."""
    jobs: list[Job] = []
    first_line: dict[str, int] = {}
    rules = default_rules()  # a broken rule file stops the run here, not line by line
    for n, item, error in rows:
        if item is None:
            jobs.append(Job(n, f"line-{n}", error=error))
            continue
        sku = str(item.get("sku") or f"line-{n}")
        if sku in first_line:
            first = first_line[sku]
            jobs.append(Job(n, sku, duplicate_of=first, error=(
                f"line {n} (sku {sku}): duplicate sku, first on line {first}; "
                f"only line {first} is generated")))
            continue
        first_line[sku] = n
        job = Job(n, sku, params={k: item[k] for k in GENERATION_FIELDS if k in item})
        jobs.append(job)
        if arms is None and clip_is_done(out_dir, previous.get(sku)):
            job.done = True
            continue
        try:
            job.prompt, job.warnings = resolve_prompt(item)
            check = check_prompt(job.prompt, rules)  # a block fails this line only
            job.compliance = check.to_dict()
            job.prompt = check.raise_if_blocked().prompt
            try:
                job.seed = int(item["seed"]) if "seed" in item else sku_seed(sku)
            except (TypeError, ValueError):
                raise ValueError(f"seed must be an integer, got {item['seed']!r}") from None
        except (ListingError, ValueError) as exc:
            job.error = f"line {n} (sku {sku}): {exc}"
    if arms is not None:
        jobs = arms.expand(jobs, previous, out_dir)
    to_make = [j for j in jobs if not j.done and j.error is None]
    names = assign_names([j.key for j in to_make], previous)
    for job in to_make:
        job.path, why = names[job.key]
        if job.path is None:
            job.error = f"line {job.line} (sku {job.sku}): {why}"
        elif why:
            job.warnings.append(why)
    return jobs


def write_atomic(path: Path, data: bytes) -> None:
    """Temporary name in the same folder, fsync, rename: whoever opens `path` (a resumed
    run included) finds the old file or the whole new one, never part of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name == "posix":  # the rename is durable once the folder is; Windows cannot open one
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    """Whether the process that named a temporary file still runs (and may be writing it)."""
    if pid <= 0 or pid == os.getpid() or os.name != "posix":
        return False  # on Windows os.kill(pid, 0) sends CTRL_C: there, one run per folder
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temps(out_dir: Path) -> list[Path]:
    """Temporary clips left by a killed run (one whose pid is gone) are partial: delete."""
    removed = []
    for p in out_dir.glob(".*.tmp"):
        m = _TEMP.match(p.name)
        if m and not _pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _end_torn_line(path: Path) -> None:
    # A run killed mid-append leaves a line without its newline; end it so the next record
    # starts on a line of its own (read_manifest skips the torn one).
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


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
              timeout: float | None = None, qc: QcPolicy = QcPolicy(), stream=sys.stderr,
              client_factory: Callable[[str], T2VClient] = T2VClient,
              arms: Arms | None = None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.jsonl"
    _end_torn_line(manifest_path)
    remove_stale_temps(out_dir)
    previous = read_manifest(manifest_path)
    if arms is not None:
        arms.check_manifest(previous, manifest_path)
    jobs = plan_batch(read_catalog(catalog), previous, out_dir, arms)
    lock = threading.Lock()

    def record(entry: dict) -> None:
        with lock:
            with open(manifest_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def one(client: T2VClient, job: Job) -> dict:
        entry = job.record()
        t0 = time.monotonic()
        try:
            # plan_batch gives every job it leaves to make a prompt and a file name
            assert job.prompt is not None and job.path is not None
            video = client.generate(job.prompt, seed=job.seed, timeout=timeout, **job.params)
            write_atomic(out_dir / job.path, video.mp4)
            reasons = qc.review_reasons(video.qc)
            entry.update(path=job.path, bytes=len(video.mp4),
                         sha256=hashlib.sha256(video.mp4).hexdigest(), qc=video.qc, error=None,
                         status="review" if reasons else "ok", review=reasons,
                         model=video.model, served_variant=video.info.get("variant"))
        except (T2VError, ValueError, TypeError) as exc:
            entry["error"] = f"line {job.line} (sku {job.sku}): {exc}"
        entry["latency_s"] = round(time.monotonic() - t0, 3)
        return entry

    failed_early = [j for j in jobs if not j.done and j.error is not None]
    to_make = [j for j in jobs if not j.done and j.error is None]
    progress = Progress(len(failed_early) + len(to_make), stream)
    summary: dict[str, Any] = {"skipped": sum(j.done for j in jobs), "ok": 0, "review": 0,
                               "failed": 0}
    local = threading.local()
    clients: list[T2VClient] = []

    def worker(job: Job) -> dict:
        if not hasattr(local, "client"):
            local.client = client_factory(url)
            with lock:
                clients.append(local.client)
        return one(local.client, job)

    try:
        # Failures known without a request go first: a duplicate line's record then precedes
        # the record of the line it duplicates, in this run at least.
        for job in failed_early:
            record(job.record())
            summary["failed"] += 1
            progress.update(True)
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            for future in as_completed([pool.submit(worker, job) for job in to_make]):
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
