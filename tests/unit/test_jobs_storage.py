"""Storage for finished clips: LocalStorage on a temp directory, S3Storage against a real moto
S3 server, and storage_from_url for both."""

import base64
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from t2vserve.jobs.storage import LocalStorage, NotFound, S3Storage, storage_from_url
from tests.jobs_fixtures import new_bucket, s3_server  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CLIP = bytes(range(256)) * 300  # 76.8 kB, not a real MP4: storage does not care

BAD_KEYS = [
    "",
    "/videos/a.mp4",
    "../a.mp4",
    "videos/../../etc/passwd",
    "videos/a..mp4",
    "videos//a.mp4",
    "videos/",
    ".a.mp4",
    "videos/.a.mp4.x.tmp",
    "videos/a b.mp4",
    "videos\\a.mp4",
    "videos/é.mp4",
    "videos/a.mp4?x=1",
    "a" * 1025,
]


def test_local_round_trip(tmp_path):
    store = LocalStorage(tmp_path)
    location = store.put("videos/job_1.mp4", CLIP)
    path = tmp_path / "videos" / "job_1.mp4"
    assert location == path.as_uri()
    assert path.read_bytes() == CLIP
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert store.exists("videos/job_1.mp4")
    assert store.get("videos/job_1.mp4") == CLIP
    assert b"".join(store.iter_chunks("videos/job_1.mp4", chunk_size=1000)) == CLIP

    store.put("videos/job_1.mp4", b"second")  # overwrite
    assert store.get("videos/job_1.mp4") == b"second"

    store.copy("videos/job_1.mp4", "cache/abc.mp4")
    assert store.get("cache/abc.mp4") == b"second"

    store.delete("videos/job_1.mp4")
    assert not store.exists("videos/job_1.mp4")
    store.delete("videos/job_1.mp4")  # absent is fine
    assert store.get("cache/abc.mp4") == b"second"  # the copy is its own object
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["abc.mp4"]


def test_local_absent_keys(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("videos/a.mp4", b"x")
    for key in ("videos/b.mp4", "videos", "videos/a.mp4/c"):
        assert not store.exists(key)
        with pytest.raises(NotFound):
            store.get(key)
        with pytest.raises(KeyError):  # NotFound is a KeyError
            store.iter_chunks(key)
    with pytest.raises(NotFound):
        store.copy("videos/b.mp4", "videos/c.mp4")
    assert not store.exists("videos/c.mp4")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_refused(tmp_path, key):
    store = LocalStorage(tmp_path)
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.copy("videos/a.mp4", key),
        lambda: S3Storage("bucket", client=object()).put(key, b"x"),  # refused before any call
    ):
        with pytest.raises(ValueError):
            call()
    assert list(tmp_path.iterdir()) == []


def test_local_put_failing_midway_leaves_no_partial_file(tmp_path):
    """A real write failure part way through (the file-size limit: EFBIG after 4 kB, as a full
    disk would): the old object stays whole and no temp file is left behind."""
    store = LocalStorage(tmp_path)
    store.put("videos/a.mp4", b"old clip")
    script = textwrap.dedent(
        """
        import errno, resource, signal, sys
        from t2vserve.jobs.storage import LocalStorage
        store = LocalStorage(sys.argv[1])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        for key in ("videos/a.mp4", "videos/new.mp4"):
            try:
                store.put(key, b"n" * 100_000)
            except OSError as e:
                assert e.errno == errno.EFBIG, e
            else:
                sys.exit("put did not fail")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert store.get("videos/a.mp4") == b"old clip"
    assert not store.exists("videos/new.mp4")
    assert os.listdir(tmp_path / "videos") == ["a.mp4"]


def test_local_copy_is_atomic_too(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("a.mp4", CLIP)
    store.put("b.mp4", b"old")
    store.copy("a.mp4", "b.mp4")
    assert store.get("b.mp4") == CLIP
    assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4"]


def test_storage_from_url_local(tmp_path):
    by_path = storage_from_url(str(tmp_path / "plain"))
    by_url = storage_from_url((tmp_path / "viaurl").as_uri())
    assert isinstance(by_path, LocalStorage) and by_path.root == tmp_path / "plain"
    assert isinstance(by_url, LocalStorage) and by_url.root == tmp_path / "viaurl"
    by_url.put("videos/a.mp4", b"x")
    assert (tmp_path / "viaurl" / "videos" / "a.mp4").read_bytes() == b"x"


@pytest.mark.parametrize(
    "url, says",
    [
        ("", "s3://bucket"),
        ("http://example.com/videos", "s3://bucket"),
        ("gs://bucket/videos", "s3://bucket"),
        ("file://otherhost/videos", "file:///absolute/dir"),
        ("file:relative/dir", "file:///absolute/dir"),
        ("s3:///videos", "names no bucket"),
        ("s3://bucket/videos?endpoint=http://x", "unknown parameter"),
        ("s3://bucket/../videos", "'..'"),
    ],
)
def test_storage_from_url_refuses(url, says):
    with pytest.raises(ValueError) as e:
        storage_from_url(url)
    assert says in str(e.value)


# --- S3, against a real moto server ---------------------------------------------------


def test_s3_round_trip(s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    store = S3Storage(bucket, prefix="/t2v/", endpoint_url=s3_server, region="us-east-1")
    assert store.put("videos/job_1.mp4", CLIP) == f"s3://{bucket}/t2v/videos/job_1.mp4"

    head = store.client.head_object(Bucket=bucket, Key="t2v/videos/job_1.mp4", ChecksumMode="ENABLED")
    assert head["ContentType"] == "video/mp4"
    assert head["ContentLength"] == len(CLIP)
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(CLIP).digest()).decode()

    assert store.exists("videos/job_1.mp4")
    assert store.get("videos/job_1.mp4") == CLIP
    assert b"".join(store.iter_chunks("videos/job_1.mp4", chunk_size=1000)) == CLIP
    listed = store.client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["t2v/videos/job_1.mp4"]


def test_s3_exists_delete_copy(s3_server):  # noqa: F811
    store = S3Storage(new_bucket(s3_server), endpoint_url=s3_server)
    assert not store.exists("videos/a.mp4")
    with pytest.raises(NotFound):
        store.get("videos/a.mp4")
    with pytest.raises(NotFound):
        store.iter_chunks("videos/a.mp4")
    with pytest.raises(NotFound):
        store.copy("videos/a.mp4", "videos/b.mp4")
    store.delete("videos/a.mp4")  # absent is fine

    store.put("videos/a.mp4", CLIP)
    store.copy("videos/a.mp4", "cache/h.mp4")
    store.delete("videos/a.mp4")
    assert not store.exists("videos/a.mp4")
    assert store.exists("cache/h.mp4")
    assert store.get("cache/h.mp4") == CLIP


def test_storage_from_url_s3(s3_server):  # noqa: F811
    bucket = new_bucket(s3_server)
    store = storage_from_url(f"s3://{bucket}/clips?endpoint_url={s3_server}&region=us-east-1")
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix) == (bucket, "clips/")
    assert store.put("videos/a.mp4", b"clip") == f"s3://{bucket}/clips/videos/a.mp4"
    assert store.client.get_object(Bucket=bucket, Key="clips/videos/a.mp4")["Body"].read() == b"clip"
    # no prefix, endpoint from the URL, credentials and region from the environment
    bare = storage_from_url(f"s3://{bucket}?endpoint_url={s3_server}")
    assert isinstance(bare, S3Storage) and bare.prefix == ""
    assert bare.get("clips/videos/a.mp4") == b"clip"
