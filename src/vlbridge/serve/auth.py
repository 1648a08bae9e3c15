"""API keys and the modalities each key may use (SPEC §5 permission control).

The keys file is JSON: {"keys": [{"key": "...", "name": "...", "modalities": ["text", "image", "video"]}]} (no
"modalities": all of them). A request names its key as `Authorization: Bearer KEY`; every known key is compared in
constant time (hmac.compare_digest), all of them each time, so the response time says nothing about how much of a
key was right.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from vlbridge.errors import ConfigError
from vlbridge.serve.schemas import APIError

MODALITIES = ("text", "image", "video")


@dataclass(frozen=True)
class APIKey:
    """One key: its secret, a name for logs, the modalities it may send."""

    key: str
    name: str
    modalities: frozenset[str]


OPEN = APIKey(key="", name="-", modalities=frozenset(MODALITIES))
"""The identity of every request when the server runs without a keys file."""


class KeyStore:
    """The keys a server accepts; `authenticate(header)` returns the key or raises APIError 401."""

    def __init__(self, keys: list[APIKey]) -> None:
        self.keys = keys

    @classmethod
    def from_file(cls, path: str | Path) -> KeyStore:
        """Read a keys file; ConfigError naming the entry and field on anything malformed."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read the API keys file {path}: {err.strerror}") from err
        except json.JSONDecodeError as err:
            raise ConfigError(f"API keys file {path} is not valid JSON: {err}") from err
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f'API keys file {path} must hold {{"keys": [{{"key", "name", "modalities"}}, ...]}}')
        keys = []
        for i, entry in enumerate(entries):
            key = entry.get("key") if isinstance(entry, dict) else None
            modalities = entry.get("modalities", list(MODALITIES)) if isinstance(entry, dict) else None
            if not isinstance(key, str) or len(key) < 8:
                raise ConfigError(f"{path}: keys[{i}].key must be a string of at least 8 characters")
            if not isinstance(modalities, list) or not set(modalities) <= set(MODALITIES):
                raise ConfigError(f"{path}: keys[{i}].modalities must be a list drawn from {list(MODALITIES)}")
            keys.append(APIKey(key, str(entry.get("name", f"key{i}")), frozenset(modalities)))
        if len({k.key for k in keys}) != len(keys):
            raise ConfigError(f"{path}: two entries share one key; give each client its own")
        return cls(keys)

    def authenticate(self, authorization: str | None) -> APIKey:
        """The key an `Authorization: Bearer KEY` header names; APIError 401 when it is missing or unknown."""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
        found = None
        for key in self.keys:  # no early exit: every key is compared
            if hmac.compare_digest(key.key.encode(), given.strip().encode()):
                found = key
        if found is None:
            raise APIError(401, "unknown API key", code="invalid_api_key")
        return found
