"""`t2vserve bench sampling`: what each sampling mode costs in quality, through the served stack
(issue 21, Show 1 and 2).

One tritonserver serves a copy of the profile with these model variants: `base`, two step-cache
thresholds, a CFG interval and, where its asset exists, the distilled 4-step student. Every
row sends the 16 colour prompts (8 colours x English and Chinese) x the seeds at 128x128x17:
base at 50 steps (the reference clip), 20 and 8 steps, each cache at 50, the CFG interval at
50, the student at its own 4 steps and, as its control, the undistilled base at 4 steps
without CFG. Per row: DiT forwards per video (from `info`), wall time
against the reference (sequential requests at concurrency 1, rows interleaved per prompt and
seed so drift on a shared machine lands on every row alike), PSNR and SSIM of the decoded clip
to the reference clip of the same prompt and seed, and colour adherence (`dominant_hue` of the
clip is the prompt's colour).
"""

import datetime as dt
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from t2vserve.perf.clip_quality import psnr_db, ssim
from t2vserve.perf.sampling_report import DISTILLED_STEPS, REFERENCE_STEPS, check_targets
from t2vserve.serve.server import free_ports

DISTILLED_ASSET = "tiny-distilled"
SIZE = (128, 128, 17)
SEEDS = (0, 1)
GUIDANCE = 5.0

# Chosen from an in-process sweep on the shipped tiny model at 50 steps (8 colour prompts,
# seed 0, raw frames against base 50): threshold/max_skips 0.1/2 -> 36 forwards, 43 dB;
# 0.3/4 -> 22, 35.6 dB (worst clip 32.2); 0.5/6 -> 16, 31.3 dB (worst 27.7); 1.0/8 -> 14,
# 28.6 dB. lo is the safe setting; hi the most forwards saved with its worst clip still
# above 30 dB, leaving room for the MP4's own loss in the served comparison.
CACHE_LO = {"threshold": 0.1, "max_skips": 2}
CACHE_HI = {"threshold": 0.3, "max_skips": 4}
GUIDANCE_INTERVAL = [0.0, 0.5]

@dataclass(frozen=True)
class Row:
    label: str
    variant: str
    steps: int | None  # None: the variant's own (few-step)
    guidance: float | None = GUIDANCE  # None: the variant's own (few-step)
    group: str | None = None  # what `--only` selects it by (default its variant)


def colour_prompts(n: int | None = None) -> list[tuple[str, str, str]]:
    """(colour, language, prompt): the 16 colour prompts of the trained tiny model's
    evaluation, colours in order, English then Chinese; the first `n` of them."""
    from t2vserve.train.evaluate import colour_prompt
    from t2vserve.train.synthetic import COLOURS

    out = [(c, lang, colour_prompt(c, lang)) for c in COLOURS for lang in ("en", "zh")]
    return out[:n] if n else out


def distilled_available() -> bool:
    from t2vserve.sampling import ASSETS

    return (ASSETS / DISTILLED_ASSET / "sampling.json").exists()


def table_variants(cache_lo=CACHE_LO, cache_hi=CACHE_HI, interval=GUIDANCE_INTERVAL,
                   distilled: bool = True) -> dict:
    variants = {"base": {}, "cache-lo": {"cache": dict(cache_lo)},
                "cache-hi": {"cache": dict(cache_hi)},
                "cfg-interval": {"guidance_interval": list(interval)}}
    if distilled:
        variants["distilled"] = {"lora": [f"asset:{DISTILLED_ASSET}/lora.safetensors"],
                                 "sampling": f"asset:{DISTILLED_ASSET}/sampling.json"}
    return variants


def default_rows(reference_steps: int = REFERENCE_STEPS, distilled: bool = True) -> list[Row]:
    rows = [Row(f"base {reference_steps}", "base", reference_steps),
            Row("base 20", "base", 20), Row("base 8", "base", 8),
            Row(f"cache-lo {reference_steps}", "cache-lo", reference_steps),
            Row(f"cache-hi {reference_steps}", "cache-hi", reference_steps),
            Row(f"cfg-interval {reference_steps}", "cfg-interval", reference_steps)]
    if distilled:
        rows.append(Row(f"distilled {DISTILLED_STEPS}", "distilled", None, None))
        # the control: the base model at the student's steps and guidance, undistilled
        rows.append(Row(f"base {DISTILLED_STEPS}, no CFG", "base", DISTILLED_STEPS, 1.0,
                        group="distilled"))
    return rows


def write_profile(source: str | Path, out_dir: Path, variants: dict, ports: list[int]) -> Path:
    """A copy of `source` with these variants, its own loopback ports, and the text encoder's
    response cache off, so every request pays the same encoding (the reference row, sent
    first, would otherwise pay it for the rows after it)."""
    from t2vserve.profile import load_profile

    src = load_profile(source)
    data = yaml.safe_load(src.path.read_text())
    data["root"] = str(src.root)  # its relative paths (artifacts, checkpoint) as the source's
    data["name"] = f"{data['name']}-sampling-table"
    data["variants"] = variants
    data["cache"]["text_encoder_response_cache"] = False
    http, grpc, metrics, supervisor = ports
    data["server"].update(address="127.0.0.1", http_port=http, grpc_port=grpc,
                          metrics_port=metrics, supervisor_port=supervisor)
    path = Path(out_dir) / "profiles" / "sampling-table.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


def prepare_artifacts(profile, *, calibration_prompts: int = 8,
                      calibration_steps: int | None = None, log=print) -> None:
    """The base export if missing, each LoRA variant's DiT, each cache variant's curve (when
    missing or measured on other weights): what `serve` needs, done here so the table does
    not depend on how `_ensure_artifacts` is wired."""
    from t2vserve.cli import _ensure_artifacts
    from t2vserve.export.calibrate import calibrate_cache
    from t2vserve.export.variants import ensure_variants
    from t2vserve.sampling import CacheCurve, calibration_path, variants_of
    from t2vserve.serve.stages import variant_manifest

    if not (profile.artifacts / "manifest.json").exists():
        _ensure_artifacts(profile)
    ensure_variants(profile, log=log)
    for variant in variants_of(profile).values():
        if variant.sampling.cache is None:
            continue
        try:
            CacheCurve.load(calibration_path(profile, variant),
                            variant_manifest(profile, variant)["weight_hash"])
        except (FileNotFoundError, ValueError) as why:
            log(f"variant {variant.name}: {why}; calibrating now")
            calibrate_cache(profile, variant.name, prompts=calibration_prompts,
                            steps=calibration_steps, log=log)


# the run ------------------------------------------------------------------------------------

def expected_forwards(mode: str, steps: int, guidance: float, interval, cached: list) -> int:
    """The DiT forwards (batch rows) a request spends, from its mode: a CFG pair per computed
    step inside the guidance interval, one pass outside it or without guidance, none for a
    cached step."""
    total = 0
    for i in range(steps):
        if i in cached:
            continue
        cfg = mode == "base" and guidance > 1.0 and (
            interval is None or interval[0] * steps <= i < interval[1] * steps)
        total += 2 if cfg else 1
    return total


def _generate(client, row: Row, prompt: str, seed: int, size) -> dict:
    from t2vserve.media import decode_mp4

    width, height, frames = size
    t0 = time.perf_counter()
    video = client.generate(prompt, width=width, height=height, num_frames=frames,
                            steps=row.steps, guidance_scale=row.guidance,
                            seed=seed, model_variant=row.variant)
    wall = time.perf_counter() - t0
    clip, _ = decode_mp4(video.mp4)
    return {"clip": clip, "wall_s": wall, "info": video.info}


def measure(url: str, profile, rows: list[Row], prompts, seeds, size=SIZE, log=print) -> dict:
    """Send every (prompt, seed) through every row, one request at a time; the first row is
    the reference. Returns per-row raw records (clips kept for the comparisons)."""
    from t2vserve.client import T2VClient
    from t2vserve.sampling import variants_of

    variants = variants_of(profile)
    unknown = [r.variant for r in rows if r.variant not in variants]
    if unknown:
        raise ValueError(f"rows name variants the profile lacks: {unknown}; it has "
                         f"{', '.join(variants)}")
    records = {r.label: [] for r in rows}
    with T2VClient(url) as client:
        # one untimed request per variant first: each DiT model's first call sets up its session
        for name in dict.fromkeys(r.variant for r in rows):
            steps = None if variants[name].sampling.mode == "few_step" else 2
            client.generate("warm-up", width=size[0], height=size[1], num_frames=size[2],
                            steps=steps, seed=0, model_variant=name)
        t0 = time.perf_counter()
        for k, (colour, language, prompt) in enumerate(prompts):
            for seed in seeds:
                for row in rows:
                    rec = _generate(client, row, prompt, seed, size)
                    rec.update(colour=colour, language=language, seed=seed)
                    records[row.label].append(rec)
            log(f"  prompt {k + 1}/{len(prompts)} x {len(seeds)} seeds, all rows: "
                f"{time.perf_counter() - t0:.0f} s")
    return records


def summarise(rows: list[Row], records: dict, variants: dict, seeds) -> list[dict]:
    """The table: one dict per row, the first row the reference."""
    from t2vserve.train.measures import dominant_hue

    ref_row = rows[0]
    ref = records[ref_row.label]
    ref_wall = float(np.mean([r["wall_s"] for r in ref]))
    ref_denoise = float(np.mean([r["info"]["stages_ms"]["denoise"] for r in ref]))
    out = []
    for row in rows:
        recs = records[row.label]
        variant = variants[row.variant]
        s = variant.sampling
        forwards, expected, psnrs, ssims, hits = [], [], [], [], {seed: 0 for seed in seeds}
        for rec, base in zip(recs, ref):
            assert (rec["colour"], rec["seed"]) == (base["colour"], base["seed"])
            samp = rec["info"]["sampling"]
            forwards.append(int(samp["dit_forwards"]))
            req = rec["info"]["request"]
            expected.append(expected_forwards(samp["mode"], int(req["steps"]),
                                              float(req["guidance_scale"]),
                                              s.guidance_interval, samp["cached_steps"]))
            psnrs.append(psnr_db(rec["clip"], base["clip"]))
            ssims.append(ssim(rec["clip"], base["clip"]))
            hits[rec["seed"]] += dominant_hue(rec["clip"])[0] == rec["colour"]
        finite = [p for p in psnrs if np.isfinite(p)]
        info = recs[0]["info"]
        cached = [len(r["info"]["sampling"]["cached_steps"]) for r in recs]
        out.append({
            "row": row.label, "variant": row.variant, "mode": s.mode,
            "steps": int(info["request"]["steps"]),
            "guidance_scale": float(info["request"]["guidance_scale"]),
            "guidance_interval": list(s.guidance_interval) if s.guidance_interval else None,
            "cache": ({"threshold": s.cache.threshold, "max_skips": s.cache.max_skips}
                      if s.cache else None),
            "loras": list(variant.loras),
            "videos": len(recs),
            "dit_forwards_mean": round(float(np.mean(forwards)), 2),
            "dit_forwards_min": min(forwards), "dit_forwards_max": max(forwards),
            "dit_forwards_expected_mean": round(float(np.mean(expected)), 2),
            "forwards_match_mode": forwards == expected,
            "cached_steps_mean": round(float(np.mean(cached)), 2),
            "wall_s_mean": round(float(np.mean([r["wall_s"] for r in recs])), 4),
            "wall_ratio": round(float(np.mean([r["wall_s"] for r in recs])) / ref_wall, 4),
            "denoise_ms_mean": round(float(np.mean(
                [r["info"]["stages_ms"]["denoise"] for r in recs])), 1),
            "denoise_ratio": round(float(np.mean(
                [r["info"]["stages_ms"]["denoise"] for r in recs])) / ref_denoise, 4),
            # identical clips (PSNR infinite) are counted, not averaged
            "identical_clips": len(psnrs) - len(finite),
            "psnr_db_mean": round(float(np.mean(finite)), 3) if finite else None,
            "psnr_db_min": round(float(np.min(finite)), 3) if finite else None,
            "ssim_mean": round(float(np.mean(ssims)), 5),
            "ssim_min": round(float(np.min(ssims)), 5),
            "colour_hits_per_seed": {str(k): v for k, v in hits.items()},
            "colour_hits_mean": round(float(np.mean(list(hits.values()))), 2),
            "colour_prompts": len(recs) // len(seeds),
            "timesteps_first_video": info["sampling"]["timesteps"],
        })
    return out


def run_table(profile_source: str | Path = "profiles/cpu-tiny.yaml", *,
              rows: list[Row] | None = None, variants: dict | None = None,
              prompts: int | None = None, seeds=SEEDS, size=SIZE,
              work_dir: Path = Path("build/sampling-table"), calibration_prompts: int = 8,
              calibration_steps: int | None = None, log=print) -> dict:
    """Serve the table's profile, measure every row, stop the server; the result document."""
    from t2vserve.perf.run import device_label, machine
    from t2vserve.profile import load_profile
    from t2vserve.sampling import variants_of
    from t2vserve.serve.repository import render_repository
    from t2vserve.serve.server import ServerConfig, start, stop, wait_ready

    if variants is None:
        distilled = distilled_available()
        variants = table_variants(distilled=distilled)
        skipped = None if distilled else (f"t2vserve/assets/{DISTILLED_ASSET}/sampling.json "
                                          f"does not exist (the student is not trained yet)")
    else:
        distilled = "distilled" in variants
        skipped = None if distilled else "this run's variants leave it out"
    rows = rows or default_rows(distilled=distilled)
    work_dir = Path(work_dir)
    path = write_profile(profile_source, work_dir, variants, free_ports(4))
    profile = load_profile(path)
    prepare_artifacts(profile, calibration_prompts=calibration_prompts,
                      calibration_steps=calibration_steps, log=log)
    chosen = colour_prompts(prompts)
    repo = render_repository(profile, work_dir / "model_repository")
    cfg = ServerConfig.from_profile(profile, repo)
    server_log = work_dir / "tritonserver.log"
    log(f"starting tritonserver for {profile.name} on 127.0.0.1:{cfg.grpc_port} "
        f"(log {server_log})")
    proc = start(cfg, server_log)
    try:
        wait_ready(cfg, proc)
        url = f"{cfg.address}:{cfg.grpc_port}"
        log(f"{len(rows)} rows x {len(chosen)} prompts x {len(seeds)} seeds at "
            f"{'x'.join(map(str, size))}, one request at a time")
        t0 = time.perf_counter()
        records = measure(url, profile, rows, chosen, seeds, size, log)
        elapsed = time.perf_counter() - t0
    except Exception:
        log(server_log.read_bytes()[-3000:].decode("utf-8", "replace"))
        raise
    finally:
        stop(proc)
    table = summarise(rows, records, variants_of(profile), seeds)
    m = machine()
    manifest = json.loads((profile.artifacts / "manifest.json").read_text())
    return {
        "kind": "t2vserve.perf.sampling_table", "version": 1,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": m["host"], "device": device_label(m), "machine": m,
        "profile": profile.name, "source_profile": str(profile_source),
        "model": {"preset": manifest["preset"], "weight_hash": manifest["weight_hash"]},
        "workload": {"width": size[0], "height": size[1], "num_frames": size[2],
                     "guidance_scale": GUIDANCE, "seeds": list(seeds), "prompts": len(chosen),
                     "languages": "en, zh", "concurrency": 1,
                     "order": "per prompt and seed, every row in turn",
                     "text_encoder_response_cache": False},
        "reference": rows[0].label, "variants": variants,
        "rows": table, "targets": check_targets(table, len(chosen), skipped),
        "distilled_skipped": skipped, "elapsed_s": round(elapsed, 1),
        # what a later run adding rows must reproduce (`merge`)
        "reference_clips_sha256": [hashlib.sha256(r["clip"].tobytes()).hexdigest()
                                   for r in records[rows[0].label]],
        "command": " ".join(["t2vserve"] + sys.argv[1:]) if sys.argv else None,
    }
