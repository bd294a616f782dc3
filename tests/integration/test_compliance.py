"""The compliance filter where prompts enter: `t2vserve batch` (a 12-line catalog with three
violating listings), the jobs API (POST /v1/videos) and the gateway route it mounts."""

import json
import subprocess
import sys

import pytest

from tests.jobs_fixtures import SMALL, api, jobs, submit, wait_job  # noqa: F401

CLI = [sys.executable, "-m", "t2vserve.cli"]
TINY = {"width": 64, "height": 64, "num_frames": 5, "steps": 1}

CLEAN = [
    {"sku": "C01", "name": "无线蓝牙耳机", "color": "白色", "features": ["主动降噪", "续航30小时"]},
    {"sku": "C02", "name": "Stainless Steel Water Bottle", "color": "silver"},
    {"sku": "C03", "prompt": "a red ceramic mug rotating on a wooden table"},
    {"sku": "C04", "name": "纯棉T恤", "material": "100%纯棉", "color": "蓝色"},
    {"sku": "C05", "name": "Canvas Tote Bag", "features": ["gift for first-time buyers"]},
    {"sku": "C06", "prompt": "第一次使用的折叠露营椅，放在草地上"},
    {"sku": "C07", "name": "Desk Lamp", "color": "black", "features": ["adjustable arm"]},
    {"sku": "C08", "prompt": "a green apple and a glass of juice on a kitchen counter"},
    {"sku": "C09", "name": "保温杯", "color": "黑色", "features": ["一键开盖"]},
]
VIOLATING = [
    {"sku": "V-MED", "name": "助眠枕头", "features": ["可治疗失眠"]},           # block: medical
    {"sku": "V-BRAND", "prompt": "Nike running shoes on a wet street at night"},  # block: brand
    {"sku": "V-BEST", "name": "Best-selling Water Bottle", "color": "blue"},   # rewrite
]


def test_batch_blocks_two_rewrites_one_and_makes_the_rest(server, tmp_path):
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    lines = [*CLEAN[:4], VIOLATING[0], *CLEAN[4:8], VIOLATING[1], CLEAN[8], VIOLATING[2]]
    catalog.write_text("\n".join(json.dumps({**x, **TINY}, ensure_ascii=False) for x in lines)
                       + "\n", encoding="utf-8")
    r = subprocess.run([*CLI, "batch", str(catalog), "--out-dir", str(out), "--url",
                        server.grpc_url], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr  # two lines failed
    assert "2 failed" in r.stdout, r.stdout
    records = {x["sku"]: x for x in map(json.loads, (out / "manifest.jsonl").read_text(
        encoding="utf-8").splitlines())}
    assert len(records) == 12

    med, brand = records["V-MED"], records["V-BRAND"]
    for record, rule, text in ((med, "zh.medical.treat", "治疗"), (brand, "brand.nike", "Nike")):
        assert record["status"] == "failed" and record["path"] is None
        assert record["compliance"]["action"] == "block" and rule in record["compliance"]["rules"]
        hit = next(h for h in record["compliance"]["hits"] if h["rule"] == rule)
        start, end = hit["span"]
        assert record["compliance"]["original"][start:end] == text == hit["text"]
        assert f"rule {rule}" in record["error"] and f"at characters {start}-{end}" in record["error"]
        assert not (out / f"{record['sku']}.mp4").exists()

    best = records["V-BEST"]
    assert best["status"] in ("ok", "review") and (out / best["path"]).stat().st_size > 0
    assert best["compliance"]["action"] == "rewrite"
    assert best["compliance"]["rules"] == ["en.absolute.best-selling"]
    assert "Best-selling" in best["compliance"]["original"]
    assert best["prompt"] == best["compliance"]["prompt"] and "Best-selling" not in best["prompt"]
    assert "popular" in best["prompt"]

    for item in CLEAN:
        record = records[item["sku"]]
        assert record["status"] in ("ok", "review"), record
        assert record["compliance"] == {"action": "pass", "rules": [], "hits": []}, record
        assert (out / record["path"]).stat().st_size > 0
        if "prompt" in item:
            assert record["prompt"] == item["prompt"]


@pytest.mark.slow
def test_jobs_api_refuses_a_block_and_records_a_rewrite(jobs):
    r = api(jobs.url, "/v1/videos", "POST", json={"prompt": "Nike shoes on a rock", **SMALL})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "compliance_blocked" and error["param"] == "prompt"
    assert "rule brand.nike (brand) at characters 0-4: 'Nike'" in error["message"]
    blocked = api(jobs.url, "/v1/videos", "POST", json={
        "listing": {"name": "降血压保健茶", "color": "绿色"}, **SMALL})
    assert blocked.status_code == 400 and blocked.json()["error"]["param"] == "listing"
    assert "zh.medical.disease" in blocked.json()["error"]["message"]

    created = submit(jobs.url, {"prompt": "the best red cup on a table, limited time offer",
                                **SMALL})
    check = created["request"]["compliance"]
    assert check["action"] == "rewrite" and check["rules"] == ["en.absolute.best",
                                                               "en.urgency.limited"]
    assert check["original"] == "the best red cup on a table, limited time offer"
    assert created["request"]["prompt"] == check["prompt"] == "great red cup on a table"
    job = wait_job(jobs.url, created["id"])
    assert job["status"] == "completed" and job["request"]["compliance"] == check


@pytest.mark.slow
def test_gateway_route_reports_the_check_and_refuses_a_block(jobs):
    body = {"prompt": "顶级保温杯放在木桌上", "width": 64, "height": 64, "num_frames": 5,
            "steps": 1}
    r = api(jobs.url, "/t2v/generate", "POST", json=body)
    assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4", r.text
    header = json.loads(r.headers["X-T2V-Compliance"])
    assert header == {"action": "rewrite", "prompt": "高品质保温杯放在木桌上", "hits": [
        {"rule": "zh.absolute.top", "severity": "rewrite", "span": [0, 2]}]}
    r = api(jobs.url, "/t2v/generate", "POST", json={**body, "prompt": "可以减肥的代餐奶昔"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "compliance_blocked"
    assert "rule zh.medical.body (medical) at characters 2-4: '减肥'" in r.json()["error"]["message"]
    assert json.loads(r.headers["X-T2V-Compliance"])["action"] == "block"
