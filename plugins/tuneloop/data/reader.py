"""Stream a dataset's bytes in large chunks, from a local file or an S3 object.

Large reads keep the per-line cost in the validator, not in I/O; an S3 object is streamed, never
downloaded whole, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tuneloop import storage
from tuneloop.errors import Problem, StorageError

CHUNK = 8 << 20
FIRST_CHUNK = 1 << 20
"""A small first read: the validating thread waits for the first chunk (read, hashed and
scanned) and starts sooner on 1 MB than on 8 MB."""
T = TypeVar("T")
Chunk = TypeVar("Chunk")


def read_chunks(uri: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes of ``uri`` from ``start`` to ``end`` (exclusive), in chunks of about 8 MB."""
    if storage.is_s3(uri):
        yield from _s3_chunks(uri, start, end)
        return
    path = storage.local_path(uri)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in the finally below, across yields
    except FileNotFoundError:
        raise StorageError([Problem("", "file not found", source=str(uri))]) from None
    except OSError as exc:
        raise StorageError([Problem("", f"cannot read: {exc}", source=str(uri))]) from None
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
    size = os.path.getsize(path)
    if parts <= 1 or size < CHUNK:
        return [(0, size)]
    bounds = [0]
    with open(path, "rb") as handle:
        for index in range(1, parts):
            handle.seek(max(bounds[-1], size * index // parts))
            handle.readline()
            position = handle.tell()
            if position >= size:
                break
            if position > bounds[-1]:
                bounds.append(position)
    bounds.append(size)
    return list(itertools.pairwise(bounds))


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
