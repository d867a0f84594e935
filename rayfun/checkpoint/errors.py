"""Errors of the checkpoint layer: every one names the checkpoint and, where one is at fault, the file."""

from __future__ import annotations

from ..errors import RayfunError

__all__ = ["CheckpointError", "CheckpointKeyError", "CorruptCheckpointError"]


class CheckpointError(RayfunError):
    """A checkpoint cannot be written, committed or restored as asked (a usage or consistency problem)."""


class CheckpointKeyError(CheckpointError):
    """A manifest is signed with another checkpoint key, or not signed where a key is required (or the
    reverse). Never taken for damage: nothing is quarantined or skipped, the start or recovery stops."""


class CorruptCheckpointError(CheckpointError):
    """A file of a complete checkpoint is missing, fails its checksum, or cannot be parsed.

    ``path`` is the file (full URL-less path in the store's filesystem), ``reason`` one of ``"missing"``,
    ``"size mismatch"``, ``"checksum mismatch"``, ``"unreadable"``; ``checkpoint_id`` the checkpoint whose
    manifest referenced it (None for a manifest itself). Recovery catches this and falls back to the
    previous complete checkpoint rather than loading garbage.
    """

    def __init__(self, path: str, reason: str, detail: str = "", checkpoint_id: int | None = None):
        self.path = path
        self.reason = reason
        self.detail = detail
        self.checkpoint_id = checkpoint_id
        where = f"checkpoint {checkpoint_id}: " if checkpoint_id is not None else ""
        super().__init__(f"{where}{path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # survive pickling across Ray actors with every field intact
        return (CorruptCheckpointError, (self.path, self.reason, self.detail, self.checkpoint_id))
