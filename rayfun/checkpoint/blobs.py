"""Blob access under a checkpoint URL: the one module that talks to fsspec.

Everything above it speaks in paths relative to the root (``manifests/cp-0000000012.json``). What differs
between a local disk and an object store is decided here: a local file is written in place (its
directory created on demand: retention may remove an empty one meanwhile, so a write retries), an
atomic write is temp file + fsync + rename locally and a single PUT elsewhere, a big file is staged
beside its final path (then renamed) or in the local temp directory (then uploaded), and a big file is
read from its own path locally or from a downloaded copy. Listings never come from fsspec's cache: other
processes write here. Every call to an object store is bounded in time (rayfun/storage.py).
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from ..storage import call_bounded

__all__ = ["BlobStore", "remove_file"]


class BlobStore:
    """Files under ``url`` (a local directory, ``s3://bucket/prefix``, ``memory://...``)."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)  # directories are created on first write

    def abs(self, rel: str) -> str:
        """The full path of ``rel`` (as the filesystem names it, for messages and fsspec)."""
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def rel(self, path: str) -> str:
        path = self.fs._strip_protocol(path)
        prefix = self.root.rstrip("/") + "/"
        return path[len(prefix) :] if path.startswith(prefix) else path

    # -- writing --------------------------------------------------------------------------------------

    def put(self, rel: str, data: bytes | pa.Buffer) -> None:
        path = self.abs(rel)
        if self.local:
            for attempt in range(3):  # retention may remove an empty directory between makedirs and open
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    with open(path, "wb") as f:
                        f.write(data)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
        else:  # object-store clients want bytes
            payload = data if isinstance(data, bytes) else data.to_pybytes()
            call_bounded(self.fs, "pipe_file", path, payload, size=len(payload))

    def put_atomic(self, rel: str, data: bytes) -> None:
        """All or nothing: temp file + fsync + rename locally; a single PUT on object stores."""
        path = self.abs(rel)
        if not self.local:
            call_bounded(self.fs, "pipe_file", path, data, size=len(data))
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def staging_path(self, rel: str) -> str:
        """Where a file is written before it is put in place: beside it on a local disk (then renamed), in
        the local temp directory for an object store (then uploaded from there)."""
        token = uuid.uuid4().hex[:8]
        if self.local:
            path = self.abs(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return f"{path}.tmp-{token}"
        return os.path.join(tempfile.gettempdir(), f"rayfun-{token}-{rel.rsplit('/', 1)[-1]}")

    def with_staging_file(self, rel: str, open_: Callable[[str], Any]) -> tuple[Any, str]:
        """``open_(staging path)`` and the path, retried where retention removed the directory meanwhile."""
        for attempt in range(3):
            staged = self.staging_path(rel)
            try:
                return open_(staged), staged
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def put_staged(self, rel: str, staged: str) -> None:
        """Put a staged file in place: renamed on a local disk, uploaded elsewhere; it is gone after."""
        try:
            if self.local:
                os.replace(staged, self.abs(rel))
            else:
                call_bounded(self.fs, "put_file", staged, self.abs(rel), size=os.path.getsize(staged))
        finally:
            remove_file(staged)

    def delete(self, rels: Sequence[str]) -> None:
        if not rels:
            return
        paths = [self.abs(r) for r in rels]
        try:
            call_bounded(self.fs, "rm", paths)
        except FileNotFoundError:
            for p in paths:
                try:
                    call_bounded(self.fs, "rm_file", p)
                except FileNotFoundError:
                    pass

    def remove_empty_dirs(self, top: str, keep: Callable[[str], bool]) -> None:
        """Local disks keep empty directories: remove the empty ones directly under ``top`` for which
        ``keep(name)`` is false (object stores have no directories)."""
        if not self.local:
            return
        base = self.abs(top)
        if not os.path.isdir(base):
            return
        for name in os.listdir(base):
            if keep(name):
                continue
            try:
                os.rmdir(os.path.join(base, name))  # only succeeds when empty
            except OSError:
                pass

    # -- reading --------------------------------------------------------------------------------------

    def get(self, rel: str) -> bytes:
        return call_bounded(self.fs, "cat_file", self.abs(rel))

    def local_copy(self, rel: str, size: int) -> tuple[str, bool]:
        """A local path holding ``rel`` and whether it is a temporary copy (the caller removes it): the
        file itself on a local disk, else a download into the local temp directory (``size``: its bytes,
        as the manifest records them, for the download's time bound)."""
        if self.local:
            return self.abs(rel), False
        token = uuid.uuid4().hex[:8]
        local = os.path.join(tempfile.gettempdir(), f"rayfun-restore-{token}-{rel.rsplit('/', 1)[-1]}")
        try:
            call_bounded(self.fs, "get_file", self.abs(rel), local, size=size)
        except BaseException:
            remove_file(local)
            raise
        return local, True

    def exists(self, rel: str) -> bool:
        path = self.abs(rel)
        self.fs.invalidate_cache(path)
        return call_bounded(self.fs, "exists", path)

    def size(self, rel: str) -> int:
        """The size of ``rel`` (FileNotFoundError if absent)."""
        path = self.abs(rel)
        self.fs.invalidate_cache(path)
        return call_bounded(self.fs, "size", path)

    def ls(self, rel_dir: str, detail: bool = False) -> list:
        """Entries directly under ``rel_dir`` (full paths, or fsspec's dicts with ``detail``); [] if none."""
        path = self.abs(rel_dir)
        try:
            self.fs.invalidate_cache(path)  # other processes write here: never trust a cached listing
            return call_bounded(self.fs, "ls", path, detail=detail)
        except FileNotFoundError:
            return []

    def find(self, rel_dir: str) -> list[str]:
        """Every file under ``rel_dir``, as relative paths."""
        path = self.abs(rel_dir)
        self.fs.invalidate_cache(path)
        try:
            return [self.rel(p) for p in call_bounded(self.fs, "find", path)]
        except FileNotFoundError:
            return []

    def numbered(self, rel_dir: str, pattern: re.Pattern) -> list[int]:
        """The numbers that ``pattern``'s first group finds in the names under ``rel_dir``, ascending."""
        return sorted(int(m.group(1)) for p in self.ls(rel_dir) if (m := pattern.search(p.rstrip("/"))))


def remove_file(path: str) -> None:
    """Remove a local file if it is there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
