"""A bounded on-disk outbox: exposures and feedback reach the database through it.

A request never waits for the database. Each record is appended (one O_APPEND `write()`) to this
process's own file, `<dir>/<host>-<pid>.jsonl`, and `StoreWriter` moves batches into the store
a moment later. When the database is unreachable the file simply grows, up to `max_bytes`; past
that, records are dropped and counted. Rows carry their own key (response id, feedback id) and
the store ignores keys it already has, so a batch sent again after a crash or a lost
acknowledgement still lands exactly once.

A process holds an `flock` on its file for its whole life. A file whose lock can be taken
belongs to a process that is gone (crash, restart, stop while the database was down): any
process sharing the directory adopts it, flushes it and deletes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["exposure", "feedback"]
KINDS: tuple[Kind, ...] = ("exposure", "feedback")


@dataclass
class OutboxFile:
    path: Path
    handle: Any  # the open file whose flock marks it as owned
    offset: int = 0  # bytes already in the database
    own: bool = False


class Outbox:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # appends vs. the flusher truncating the own file
        path = directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        handle = open(path, "ab")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.own = OutboxFile(path, handle, 0, own=True)
        self._adopted: dict[Path, OutboxFile] = {}

    def put(self, kind: Kind, row: dict[str, Any]) -> bool:
        """Append one record; False when the outbox is full (the record is dropped)."""
        line = (json.dumps({"kind": kind, "row": row}, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            if self.pending_bytes() + len(line) > self.max_bytes:
                return False
            written = os.write(self.own.handle.fileno(), line)
        if written != len(line):
            raise OSError(f"short write to {self.own.path}: {written} of {len(line)} bytes")
        return True

    def pending_bytes(self) -> int:
        sizes = [self._size(self.own)] + [self._size(f) for f in self._adopted.values()]
        return sum(sizes)

    def files(self) -> list[OutboxFile]:
        """This process's file and every orphan found in the directory (adopted now)."""
        for path in self.directory.glob("*.jsonl"):
            if path != self.own.path and path not in self._adopted:
                self._try_adopt(path)
        return [self.own, *self._adopted.values()]

    def read_pending(self, outbox_file: OutboxFile, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to `limit` complete records after the flushed offset, and the offset after them."""
        records: list[dict[str, Any]] = []
        with open(outbox_file.path, "rb") as reader:
            reader.seek(outbox_file.offset)
            end = outbox_file.offset
            for line in reader:
                if len(records) >= limit:
                    break
                if not line.endswith(b"\n"):
                    if not outbox_file.own:
                        end += len(line)  # its writer is gone: a torn line that will never be completed
                    break  # our own: a line still being written
                end += len(line)
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a torn line left by a crash: skip it
        return records, end

    def mark_flushed(self, outbox_file: OutboxFile, offset: int) -> bool:
        """Everything before `offset` is in the database; when that is all of it, reclaim the space
        (truncate our own file, delete an adopted one) and return True."""
        outbox_file.offset = offset
        with self._lock:
            if self._size(outbox_file) > 0:
                return False
            if outbox_file.own:
                os.truncate(outbox_file.path, 0)
                outbox_file.offset = 0
            else:
                outbox_file.path.unlink(missing_ok=True)
                outbox_file.handle.close()
                del self._adopted[outbox_file.path]
        return True

    def close(self) -> None:
        for outbox_file in [self.own, *self._adopted.values()]:
            outbox_file.handle.close()

    def _try_adopt(self, path: Path) -> None:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # its process is alive and flushes it
            return
        if not path.exists():  # flushed and deleted by another adopter between glob and lock
            handle.close()
            return
        self._adopted[path] = OutboxFile(path, handle)

    @staticmethod
    def _size(outbox_file: OutboxFile) -> int:
        try:
            return outbox_file.path.stat().st_size - outbox_file.offset
        except FileNotFoundError:
            return 0

