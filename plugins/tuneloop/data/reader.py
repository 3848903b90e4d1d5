"""Stream a dataset's bytes in large chunks, from a local file or an S3 object.

Large reads keep the per-line cost in the validator, not in I/O; an S3 object is streamed, never
downloaded whole, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from tuneloop import storage
from tuneloop.errors import Problem, StorageError

CHUNK = 8 << 20


def size_of(uri: str) -> int | None:
    if storage.is_s3(uri):
        return None
    try:
        return os.path.getsize(storage.local_path(uri))
    except OSError:
        return None


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
        while remaining is None or remaining > 0:
            chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
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
