"""What checkpoint files and manifests are checked against: SHA-256, or HMAC-SHA256 with a user's key.

A SHA-256 in the manifest catches bit rot, truncation, a partial upload and a file swapped by mistake; it
does not stop someone who can write the bucket, who can change a file and its digest alike. With a key
(``rayfun.start(..., checkpoint_key=...)``, or ``RAYFUN_CHECKPOINT_KEY``) every digest is an HMAC that
only holders of the key can compute: a manifest or file changed without it fails its check, and a
manifest that is not keyed is refused, so nothing in the bucket is trusted that the key did not sign.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from .errors import CheckpointKeyError

__all__ = ["KEY_ENV", "Checksum"]

KEY_ENV = "RAYFUN_CHECKPOINT_KEY"


class Checksum:
    """Digests of files and of JSON documents (manifests, compaction records), keyed or not."""

    def __init__(self, key: str | bytes | None = None) -> None:
        if key is None:
            key = os.environ.get(KEY_ENV) or None
        if isinstance(key, str):
            key = key.encode("utf-8")
        if key is not None and len(key) < 16:
            raise ValueError("a checkpoint key needs at least 16 bytes")
        self._key = key
        self.algorithm = "hmac-sha256" if key is not None else "sha256"

    def __reduce__(self):  # travels to the shards with the store (inside the Ray cluster)
        return (Checksum, (self._key,))

    def of(self, data: Any) -> str:
        """Hex digest of bytes (or anything with the buffer protocol, e.g. an Arrow buffer)."""
        if self._key is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def of_file(self, path: str) -> tuple[int, str]:
        """Size and hex digest of a local file, read a few MB at a time (never all of it in memory)."""
        digest = hashlib.sha256() if self._key is None else hmac.new(self._key, digestmod=hashlib.sha256)
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(4 * 2**20):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def of_document(self, body: dict) -> str:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return self.of(canonical.encode("utf-8"))

    def check_document(self, doc: dict, body: dict) -> None:
        """Raise unless ``doc``'s digest of ``body`` is this checksum's: CheckpointKeyError where a key is
        missing or differs (or the document was changed by someone without it), ValueError for damage."""
        algorithm = doc.get("checksum", "sha256")
        if algorithm != self.algorithm:
            if self._key is not None:
                raise CheckpointKeyError(
                    f"not signed with the checkpoint key (its checksum is {algorithm}): "
                    f"refused; start without checkpoint_key to use unsigned checkpoints"
                )
            raise CheckpointKeyError(
                f"signed with a checkpoint key ({algorithm}): pass checkpoint_key= (or set {KEY_ENV}) to read it"
            )
        if not hmac.compare_digest(self.of_document(body), str(doc.get("sha256"))):
            if self._key is not None:
                raise CheckpointKeyError(
                    "HMAC mismatch: signed with another key, or changed by someone without the key"
                )
            raise ValueError("checksum mismatch")

    def document(self, name: str, body: dict) -> dict:
        """The JSON document ``{name: body, "sha256": digest, "checksum": algorithm}``."""
        return {name: body, "sha256": self.of_document(body), "checksum": self.algorithm}
