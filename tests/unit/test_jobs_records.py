"""Job records on a real Redis: transitions, pagination, the cache, keys."""

import pytest

from t2vserve.jobs import auth, redis_server
from t2vserve.jobs.records import Limits, RateLimited, Records, content_hash, decode_cursor
from t2vserve.serve.server import free_ports


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    port = free_ports(1)[0]
    proc = redis_server.start(tmp_path_factory.mktemp("redis"), port)
    yield Records(f"redis://127.0.0.1:{port}/0", retry_s=1.0)
    proc.kill()
    proc.wait()


def test_transitions_decide_once(records):
    job, created = records.create("t1", {"prompt": "a"}, priority="normal", webhook_url=None,
                                  idempotency_key=None)
    assert created and job["status"] == "queued"
    assert records.claim(job["id"], "w1", lease_s=30) == 1
    # another worker, while w1's lease is live: leave it alone
    assert records.claim(job["id"], "w2", lease_s=30) == -1
    assert records.finish(job["id"], "completed", qc={"mean_luma": 1.0})
    assert not records.finish(job["id"], "completed")  # a second finisher changes nothing
    assert records.claim(job["id"], "w2") == 0
    assert records.cancel(job["id"]) == "completed"
    assert records.get(job["id"])["qc"] == {"mean_luma": 1.0}


def test_lapsed_lease_is_claimed_again_and_cancel_wins(records):
    job, _ = records.create("t2", {"prompt": "b"}, priority="high", webhook_url=None,
                            idempotency_key=None)
    assert records.claim(job["id"], "w1", lease_s=-1) == 1   # already lapsed: w1 is dead
    assert records.claim(job["id"], "w2", lease_s=30) == 2
    assert records.cancel(job["id"]) == "cancelled"
    assert not records.finish(job["id"], "completed")
    assert records.get(job["id"])["status"] == "cancelled"


def test_pagination_walks_each_job_once_even_when_the_cursor_job_is_deleted(records):
    ids = [records.create("t3", {"prompt": str(i)}, priority="normal", webhook_url=None,
                          idempotency_key=None)[0]["id"] for i in range(7)]
    first, cursor = records.list("t3", limit=3)
    assert len(first) == 3 and cursor
    records.delete(first[-1]["id"])
    rest, cursor2 = records.list("t3", limit=10, after=cursor)
    seen = [j["id"] for j in first + rest]
    assert sorted(seen) == sorted(ids) and cursor2 is None
    assert [j["created_at"] for j in first + rest] == sorted(
        (j["created_at"] for j in first + rest), reverse=True)
    for bad in ("zzz", "", "bm90LWEtY3Vyc29y", "aW5mfHZpZGVvX3g"):  # junk, "inf|video_x"
        with pytest.raises(ValueError, match="cursor"):
            decode_cursor(bad)


def test_idempotency_key_and_limits(records):
    a, created = records.create("t4", {"prompt": "c"}, priority="normal", webhook_url=None,
                                idempotency_key="k1")
    b, again = records.create("t4", {"prompt": "c"}, priority="normal", webhook_url=None,
                              idempotency_key="k1")
    assert created and not again and a["id"] == b["id"]
    with pytest.raises(RateLimited) as exc:
        records.check_rate("t4", Limits(per_minute=100, active_jobs=1))
    assert exc.value.retry_after > 0
    for _ in range(2):
        records.check_rate("t5", Limits(per_minute=2, active_jobs=10))
    with pytest.raises(RateLimited):
        records.check_rate("t5", Limits(per_minute=2, active_jobs=10))


def test_content_hash_covers_the_clip_and_the_model():
    base = {"model": "tiny@abc", "prompt": "a cup", "width": 64, "seed": 1}
    assert content_hash(base) == content_hash(dict(reversed(list(base.items()))))
    for change in ({"model": "tiny@abd"}, {"seed": 2}, {"prompt": "a mug"}, {"steps": 3}):
        assert content_hash({**base, **change}) != content_hash(base)
    assert content_hash({**base, "webhook_url": "x"}) == content_hash(base)


def test_keys_are_kept_hashed(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"alice sha256:{auth.hash_key('k-a')}  # ops\n\n")
    keys = auth.load_keys(path, env={"T2V_API_KEYS": "bob=k-b"})
    assert "k-a" not in keys and auth.owner_of("Bearer k-a", keys) == "alice"
    assert auth.owner_of("Bearer k-b", keys) == "bob"
    assert auth.owner_of("Bearer nope", keys) is None and auth.owner_of("k-a", keys) is None
    path.write_text("alice k-a\n")
    with pytest.raises(auth.KeyFileError, match=":1:"):
        auth.load_keys(path, env={})
    with pytest.raises(auth.KeyFileError):
        auth.load_keys(None, env={"T2V_API_KEYS": "bad name=k"})


def test_replay_found_before_limits(records):
    job, _ = records.create("t6", {"prompt": "d"}, priority="normal", webhook_url=None,
                            idempotency_key="k9")
    assert records.replayed("t6", "k9")["id"] == job["id"]
    assert records.replayed("t6", "other") is None and records.replayed("t7", "k9") is None
