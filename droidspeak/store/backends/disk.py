"""A local disk tier: one file per value, atomic writes, LRU by mtime."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

from .base import Backend, log


class DiskBackend(Backend):
    """One file per value under ``root`` (named by a hash of the key), atomic writes, LRU by mtime."""

    name = "disk"

    def __init__(self, root: str | Path, budget_bytes: int | None = 8 << 30):
        super().__init__(budget_bytes)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for tmp in self.root.glob("*/*.tmp*"):  # leftovers of a crash mid-write
            tmp.unlink(missing_ok=True)
        self._sizes = {p: p.stat().st_size for p in self.root.glob("*/*.st")}
        self._bytes = sum(self._sizes.values())

    def _path(self, key: str) -> Path:
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.root / h[:2] / f"{h}.st"

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            data = p.read_bytes()
            os.utime(p)
            return data
        except FileNotFoundError:
            return None
        except OSError as e:
            self.errors += 1
            log.warning("disk store read failed for %s: %s", p.name, e)
            return None

    def exists_many(self, keys: list[str]) -> list[bool]:
        return [self._path(k).exists() for k in keys]

    def put(self, key: str, value: bytes) -> bool:
        p = self._path(key)
        if self.budget is not None and len(value) > self.budget:
            return False
        with self._lock:
            self._evict_for(len(value), keep=p)
            tmp = p.with_name(p.name + f".tmp{os.getpid()}.{threading.get_ident()}")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(value)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, p)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                self.errors += 1
                log.warning("disk store write failed (%s): %s", "disk full" if e.errno == errno.ENOSPC else "error", e)
                return False
            self._bytes += len(value) - self._sizes.get(p, 0)
            self._sizes[p] = len(value)
            return True

    def _evict_for(self, size: int, keep: Path) -> None:
        if self.budget is None:
            return
        need = self._bytes - self._sizes.get(keep, 0) + size - self.budget
        if need <= 0:
            return
        def mtime(q: Path) -> float:
            try:
                return q.stat().st_mtime
            except OSError:
                return 0.0
        for q in sorted((q for q in self._sizes if q != keep), key=mtime):
            if need <= 0:
                break
            q.unlink(missing_ok=True)
            sz = self._sizes.pop(q)
            self._bytes -= sz
            need -= sz
            self.evictions += 1

    def delete(self, key: str) -> None:
        p = self._path(key)
        with self._lock:
            p.unlink(missing_ok=True)
            self._bytes -= self._sizes.pop(p, 0)

    def nbytes(self) -> int:
        return self._bytes
