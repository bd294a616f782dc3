"""API keys for the jobs service: only their SHA-256 hashes are kept.

Sources, all merged:
  a keys file   one key per line, `<owner> sha256:<64 hex>` (`#` starts a comment); made with
                `t2vserve jobs-key --owner NAME`, which prints the key once and the line to add
  T2V_API_KEY   one plain key (owner `default`), hashed when read; `make jobs` uses it
  T2V_API_KEYS  plain keys as `owner=key,owner=key`
A request sends `Authorization: Bearer <key>`; its owner sees and cancels only its own jobs.
"""

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

_OWNER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LINE = re.compile(r"^(\S+)\s+sha256:([0-9a-f]{64})$")


class KeyFileError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "t2v_" + secrets.token_urlsafe(32)


def _owner(name: str, where: str) -> str:
    if not _OWNER.match(name):
        raise KeyFileError(f"{where}: owner {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return name


def load_keys(path: Path | None = None, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """{sha256 of key: owner} from the file and the environment."""
    keys: dict[str, str] = {}
    if path is not None:
        for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            m = _LINE.match(line)
            if not m:
                raise KeyFileError(f"{path}:{n}: expected `<owner> sha256:<64 hex digits>`")
            keys[m.group(2)] = _owner(m.group(1), f"{path}:{n}")
    if env.get("T2V_API_KEY"):
        keys[hash_key(env["T2V_API_KEY"])] = "default"
    for item in filter(None, (env.get("T2V_API_KEYS") or "").split(",")):
        owner, sep, key = item.strip().partition("=")
        if not sep or not key:
            raise KeyFileError("T2V_API_KEYS is owner=key[,owner=key...]")
        keys[hash_key(key)] = _owner(owner, "T2V_API_KEYS")
    return keys


def owner_of(header: str | None, keys: Mapping[str, str]) -> str | None:
    """The owner of a `Bearer <key>` header's key, or None (no header, or unknown key)."""
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return keys.get(hash_key(key.strip()))
