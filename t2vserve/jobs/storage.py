"""Where finished MP4s go: a small key → bytes store with a local and an S3 implementation.

The contract every `Storage` keeps:
- keys are relative, slash-separated names such as "videos/<job id>.mp4" (`check_key`);
  anything else is a `ValueError` before any I/O;
- `put` is atomic: a reader sees the old object or the whole new one, never a part, and
  `put` returns only once the object is durable. A job is `completed` only after its put
  returned;
- `get` and `iter_chunks` raise `NotFound` (a `KeyError`) for an absent key; `delete` of an
  absent key is fine; `copy` is atomic like `put`.

`storage_from_url` builds one from configuration: a directory path, `file:///abs/dir`, or
`s3://bucket/prefix?endpoint_url=...&region=...` (credentials from boto3's usual chain).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import mimetypes
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
MAX_KEY_LENGTH = 1024  # S3's own limit
CHUNK_SIZE = 1 << 20


class NotFound(KeyError):
    """The key holds no object."""


def check_key(key: str) -> str:
    """`key` if it is a safe object name, else ValueError saying why."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"storage key is longer than {MAX_KEY_LENGTH} characters")
    if not _KEY_CHARS.fullmatch(key):
        raise ValueError(f"storage key {key!r} has characters outside [A-Za-z0-9._/-]")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} must be relative (no leading '/')")
    if ".." in key:
        raise ValueError(f"storage key {key!r} must not contain '..'")
    # empty segments would alias ("a//b" is "a/b" on disk); dot-names are LocalStorage's temp files
    if any(not part or part.startswith(".") for part in key.split("/")):
        raise ValueError(f"storage key {key!r} has an empty segment or one starting with '.'")
    return key


def content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


class Storage(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Store `data` at `key` atomically and durably; returns its location (a URL)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; NotFound if absent."""

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The object in chunks, for streaming a download; NotFound (raised here, before the
        first chunk) if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; an absent key is fine."""

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy atomically (like `put`); NotFound if `src_key` is absent."""

    @abstractmethod
    def location(self, key: str) -> str:
        """The URL `put` returns for `key`."""


class LocalStorage(Storage):
    """Objects as files under `root`; put and copy write a temp file in the target's directory,
    fsync it, rename it over the final name and fsync the directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def location(self, key: str) -> str:
        return self.path(key).as_uri()

    def put(self, key: str, data: bytes) -> str:
        self._write_atomic(self.path(key), lambda f: f.write(data))
        return self.location(key)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key) from None

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        f = self._open(key)

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk

        return chunks()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def copy(self, src_key: str, dst_key: str) -> None:
        dst = self.path(dst_key)
        with self._open(src_key) as src:
            self._write_atomic(dst, lambda f: shutil.copyfileobj(src, f, CHUNK_SIZE))

    def _open(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key) from None

    @staticmethod
    def _write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a file server in front may read these
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # the rename is durable only once the directory entry is
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class S3Storage(Storage):
    """Objects in an S3 bucket (or any S3-compatible store) under `prefix`. A PutObject is
    atomic by S3 semantics; each carries its SHA-256, so a body truncated on the way is refused
    by the store rather than stored, and `get` checks it on the way back."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ):
        if not bucket:
            raise ValueError("S3Storage needs a bucket name")
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3  # type: ignore[import-untyped]  # the `jobs` extra; only here

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put(self, key: str, data: bytes) -> str:
        full_key = self._key(key)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        self.client.put_object(
            Bucket=self.bucket,
            Key=full_key,
            Body=data,
            ContentType=content_type(key),
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=digest,
        )
        return self.location(key)

    def get(self, key: str) -> bytes:
        return self._get_object(key)["Body"].read()

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        body = self._get_object(key)["Body"]

        def chunks() -> Iterator[bytes]:
            with contextlib.closing(body):
                yield from body.iter_chunks(chunk_size)

        return chunks()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as e:
            if _is_not_found(e):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def copy(self, src_key: str, dst_key: str) -> None:
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self._key(dst_key),
                CopySource={"Bucket": self.bucket, "Key": self._key(src_key)},
                ChecksumAlgorithm="SHA256",
            )
        except self.client.exceptions.ClientError as e:
            if _is_not_found(e):
                raise NotFound(src_key) from None
            raise

    def _get_object(self, key: str) -> dict[str, Any]:
        try:
            return self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
            )
        except self.client.exceptions.ClientError as e:
            if _is_not_found(e):
                raise NotFound(key) from None
            raise


def _is_not_found(e: Any) -> bool:
    return e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


_ALLOWED = (
    "a directory path, file:///absolute/dir, "
    "or s3://bucket[/prefix][?endpoint_url=URL&region=NAME]"
)


def storage_from_url(url: str) -> Storage:
    """The Storage a configuration string names (see the module docstring)."""
    if not url:
        raise ValueError(f"empty storage URL; use {_ALLOWED}")
    parts = urlsplit(url)
    if not parts.scheme:
        return LocalStorage(Path(url))
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or not parts.path.startswith("/"):
            raise ValueError(f"storage URL {url!r}: a file URL is file:///absolute/dir")
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket; use {_ALLOWED}")
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ValueError(
                f"storage URL {url!r}: unknown parameter(s) {sorted(unknown)}; "
                "allowed: endpoint_url, region"
            )
        return S3Storage(
            parts.netloc,
            prefix=unquote(parts.path),
            endpoint_url=query.get("endpoint_url", [""])[-1] or None,
            region=query.get("region", [""])[-1] or None,
        )
    raise ValueError(f"unsupported storage URL {url!r}; use {_ALLOWED}")
