"""Stream a dataset's bytes in large chunks, from a local file or an S3 object.

Large reads keep the per-line cost in the validator, not in I/O; an S3 object is streamed, never
downloaded whole, so memory stays flat whatever the file size. A local path is read only when it
is a regular file: a FIFO would block, /dev/zero never ends.
"""

from __future__ import annotations

import itertools
import os
import queue
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from tuneloop import storage
from tuneloop.errors import Problem, StorageError

CHUNK = 8 << 20
FIRST_CHUNK = 1 << 20
"""A small first read: the validating thread waits for the first chunk (read, hashed and
scanned) and starts sooner on 1 MB than on 8 MB."""
T = TypeVar("T")
Chunk = TypeVar("Chunk")


def read_chunks(uri: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes of ``uri`` from ``start`` to ``end`` (exclusive), in chunks of about 8 MB.

    A StorageError when a local ``uri`` is missing or not a regular file (open_regular_file).
    """
    if storage.is_s3(uri):
        yield from _s3_chunks(uri, start, end)
        return
    handle = open_regular_file(uri)
    try:
        handle.seek(start)
        remaining = None if end is None else end - start
        size = min(FIRST_CHUNK, CHUNK)
        while remaining is None or remaining > 0:
            chunk = handle.read(size if remaining is None else min(size, remaining))
            size = CHUNK
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        handle.close()


_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_a_regular_file(uri: str, mode: int) -> StorageError:
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    return StorageError(
        [
            Problem(
                "",
                f"is {kind}, not a regular file: only regular files are read",
                source=str(uri),
                allowed="a regular file, or a symlink to one",
                fix="give the path of a JSON Lines file",
            )
        ]
    )


def _cannot_read(uri: str, exc: OSError) -> StorageError:
    message = "file not found" if isinstance(exc, FileNotFoundError) else f"cannot read: {exc}"
    return StorageError([Problem("", message, source=str(uri))])


def check_regular_file(uri: str) -> int:
    """The size of the local file ``uri``; a StorageError, without opening it, when it is
    missing or not a regular file.

    A FIFO would block the open until someone writes to it, and /dev/zero or /dev/urandom never
    end: only regular files have a size to validate.
    """
    try:
        info = os.stat(storage.local_path(uri))
    except OSError as exc:
        raise _cannot_read(uri, exc) from None
    if not stat.S_ISREG(info.st_mode):
        raise _not_a_regular_file(uri, info.st_mode)
    return info.st_size


def open_regular_file(uri: str) -> BinaryIO:
    """The local file ``uri`` opened for reading, once it is known to be a regular file.

    Checked before the open (check_regular_file) and again on the open file: opened without
    blocking, so a FIFO swapped in between the two cannot hang the open either.
    """
    check_regular_file(uri)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(storage.local_path(uri), flags)
    except OSError as exc:
        raise _cannot_read(uri, exc) from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise _not_a_regular_file(uri, mode)
    return os.fdopen(descriptor, "rb")


def _s3_chunks(uri: str, start: int, end: int | None) -> Iterator[bytes]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = storage.split_s3(uri)
    kwargs = {"Bucket": bucket, "Key": key}
    if start or end is not None:
        kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    try:
        body = storage.s3_client().get_object(**kwargs)["Body"]
        yield from body.iter_chunks(CHUNK)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        message = "object not found" if code in {"NoSuchKey", "404"} else f"cannot read: {code}"
        raise StorageError([Problem("", message, source=uri)]) from None
    except BotoCoreError as exc:
        raise StorageError([Problem("", f"cannot read: {exc}", source=uri)]) from None


def line_aligned_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """Split a file into ``parts`` byte ranges that each end just after a newline."""
    size = check_regular_file(str(path))
    if parts <= 1 or size < CHUNK:
        return [(0, size)]
    bounds = [0]
    with open_regular_file(str(path)) as handle:
        for index in range(1, parts):
            position = _after_next_newline(handle, max(bounds[-1], size * index // parts))
            if position >= size:
                break
            if position > bounds[-1]:
                bounds.append(position)
    bounds.append(size)
    return list(itertools.pairwise(bounds))


SEEK_BLOCK = 1 << 20


def _after_next_newline(handle: BinaryIO, position: int) -> int:
    """The offset just after the first newline at or after ``position`` (the end of the file
    when there is none).

    Read a block at a time, not with readline(): a line of a gigabyte would be held whole.
    """
    handle.seek(position)
    while block := handle.read(SEEK_BLOCK):
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(block)
    return position


def prefetched(chunks: Iterable[bytes], each: Callable[[bytes], Any]) -> Iterator[bytes]:
    """Read (and hash, with ``each``) the next chunks in a thread while this one is validated.

    File reads, S3 reads and SHA-256 release the GIL, so on two cores they overlap with the
    validation loop instead of adding to it.
    """
    for chunk, _ in read_ahead(chunks, each):
        yield chunk


def read_ahead(chunks: Iterable[Chunk], work: Callable[[Chunk], T]) -> Iterator[tuple[Chunk, T]]:
    """Each chunk with ``work(chunk)``, both done in a thread up to two chunks ahead."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for chunk in chunks:
                item = (chunk, work(chunk))
                while not stop.is_set():
                    try:
                        handoff.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(done)
        except BaseException as exc:
            handoff.put(exc)

    thread = threading.Thread(target=produce, name="tuneloop-read", daemon=True)
    with _prompt_handoff():
        thread.start()
        try:
            while True:
                item = handoff.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)


# While the consumer of read_ahead() runs Python code, the reading thread needs the GIL back
# after every read, hash and scan (three or four times a chunk), and by default waits up to 5 ms
# each time before the consumer is made to give it up: with 8 MB chunks that waiting made the
# reader, not the consumer, the slower of the two (about 0.1 s of a 0.75 s validation spent
# waiting for chunks). With a 1 ms switch interval the same handoffs happen sooner.
_HANDOFF_INTERVAL = 0.001
_handoff_lock = threading.Lock()
_handoff_users = 0
_handoff_saved = 0.0


@contextmanager
def _prompt_handoff() -> Iterator[None]:
    """A short GIL switch interval while any read_ahead() runs; the previous one afterwards."""
    global _handoff_users, _handoff_saved
    with _handoff_lock:
        if _handoff_users == 0:
            _handoff_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_handoff_saved, _HANDOFF_INTERVAL))
        _handoff_users += 1
    try:
        yield
    finally:
        with _handoff_lock:
            _handoff_users -= 1
            if _handoff_users == 0:
                sys.setswitchinterval(_handoff_saved)
