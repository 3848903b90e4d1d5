"""Local archives: a stage folder as a compressed tarball under the campaign's ``archive/``.

Rules:

- A folder inside the campaign root is archived at ``<campaign_root>/archive/<relative>.tar.gz``;
  a folder elsewhere at ``archive/external/<sha256(folder)[:16]>.tar.gz``.
- The tarball holds the folder's regular files and directories only, with names relative to the
  folder. Symbolic links, devices and FIFOs are neither followed nor stored.
- A tarball is written to a temporary file beside its final name, flushed to disk, then renamed
  into place: a reader sees the whole tarball or none. Its sha256 is kept beside it in
  ``<tarball>.sha256`` (``sha256sum`` format), written the same way.
- The same files give the same bytes (sorted members, gzip header without a timestamp), so a
  tarball written again after a crash has the digest recorded the first time.
- `verify_tarball` re-reads the tarball: its digest, and with the folder given, every member's
  name and size against the folder's files. `extract_tarball` verifies first, extracts into a
  temporary sibling folder, refusing any member that is not a plain file or directory inside it
  (absolute names, ``..``, links, devices; tarfile's ``data`` filter on top), then renames the
  folder into place.
- Everything streams: memory stays bounded whatever the folder's size.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

from tuneloop import storage
from tuneloop.config.paths import absolute
from tuneloop.errors import Problem, StorageError

ARCHIVE_FOLDER = "archive"
EXTERNAL_FOLDER = "external"
SUFFIX = ".tar.gz"
DIGEST_SUFFIX = ".sha256"
_CHUNK = 1024 * 1024


class LocalArchiveError(StorageError):
    """A tarball cannot be written, does not verify, or holds a member it may not extract."""


def archive_location(campaign_root: str, folder: str) -> str:
    """Where ``folder``'s tarball goes: ``<campaign_root>/archive/<relative>.tar.gz``, or
    ``archive/external/<sha256(folder)[:16]>.tar.gz`` for a folder outside the campaign root
    (or the root itself, whose tarball could not live inside it)."""
    root = _normal(campaign_root)
    path = _normal(folder)
    archive = root / ARCHIVE_FOLDER
    if path != root and path.is_relative_to(root) and not path.is_relative_to(archive):
        return str(archive / f"{path.relative_to(root).as_posix()}{SUFFIX}")
    name = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return str(archive / EXTERNAL_FOLDER / f"{name}{SUFFIX}")


def digest_path(tarball: str) -> str:
    """The file that holds ``tarball``'s sha256."""
    return f"{_normal(tarball)}{DIGEST_SUFFIX}"


def read_digest(tarball: str) -> str | None:
    """The sha256 written beside ``tarball``, or None when there is none (or it is not one)."""
    try:
        text = Path(digest_path(tarball)).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    words = text.split()
    digest = words[0].lower() if words else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def write_tarball(folder: str, tarball: str) -> tuple[str, int]:
    """Write ``folder`` to ``tarball`` (replacing one there) and its digest beside it.

    Returns (sha256 of the tarball, its size in bytes). LocalArchiveError when ``folder`` is not
    a directory.
    """
    source = _normal(folder)
    if not source.is_dir() or source.is_symlink():
        raise LocalArchiveError(
            [Problem("", "is not a folder: there is nothing to archive", source=str(source))]
        )
    target = _normal(tarball)
    target.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    with _atomic_file(target) as handle:
        writer = _HashingWriter(handle, hasher)
        # mtime=0 and no file name in the gzip header: the same files give the same bytes.
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive,
        ):
            for path, name in _members(source):
                _add(archive, path, name)
    digest = hasher.hexdigest()
    with _atomic_file(Path(digest_path(str(target)))) as handle:
        handle.write(f"{digest}  {target.name}\n".encode())
    return digest, writer.count


def verify_tarball(tarball: str, digest: str, folder: str | None = None) -> bool:
    """Whether ``tarball`` exists, reads whole as a tar.gz and has sha256 ``digest``; with
    ``folder``, also whether its members are exactly that folder's files and directories, each
    file of the same size. One pass over the tarball."""
    path = _normal(tarball)
    if not path.is_file():
        return False
    hasher = hashlib.sha256()
    members: dict[str, int | None] = {}
    try:
        with path.open("rb") as handle:
            reader = _HashingReader(handle, hasher)
            with tarfile.open(fileobj=cast("IO[bytes]", reader), mode="r|gz") as archive:
                for member in archive:
                    name = storage.tar_member_name(member.name)
                    members[name] = member.size if member.isfile() else None
            # tarfile stops at the end-of-archive blocks: the digest covers the whole file.
            reader.drain()
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return False
    if hasher.hexdigest() != digest.lower():
        return False
    if folder is None:
        return True
    return members == _folder_listing(_normal(folder))


def extract_tarball(tarball: str, folder: str, digest: str) -> None:
    """Recreate ``folder`` from ``tarball``: verified against ``digest`` first, extracted into a
    temporary sibling folder, renamed into place. LocalArchiveError when the tarball does not
    verify, ``folder`` exists and is not empty, or a member is not a plain file or directory
    inside the folder (nothing of it is left behind)."""
    source = _normal(tarball)
    target = _normal(folder)
    if not verify_tarball(str(source), digest):
        raise LocalArchiveError(
            [
                Problem(
                    "",
                    f"is missing or does not match its digest {digest}: {target} cannot be "
                    "restored from it",
                    source=str(source),
                    fix="restore the tarball from a backup; nothing was extracted",
                )
            ]
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LocalArchiveError(
            [
                Problem(
                    "",
                    "exists already: a tarball is extracted only where nothing is",
                    source=str(target),
                    fix="move the folder away, or use it as it is",
                )
            ]
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.extract-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        with tarfile.open(str(source), mode="r|gz") as archive:
            archive.errorlevel = 2
            archive.extractall(staging, filter=_plain_members_only)
        _fsync_tree(staging)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.rename(staging, target)
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalArchiveError(
            [
                Problem(
                    "",
                    f"cannot be extracted safely ({exc}); nothing was extracted",
                    source=str(source),
                    fix="a tarball written by the lifecycle holds plain files and folders only; "
                    "check where this one came from",
                )
            ]
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_folder(target.parent)


def remove_folder(folder: str, *, keep_if: Callable[[], bool] | None = None) -> bool:
    """Remove ``folder`` so that no half-removed folder is ever seen under its name: it is
    renamed to a hidden sibling first (atomic), then deleted. A leftover from an interrupted
    removal is deleted too. Nothing when the folder does not exist. True when it was removed.

    ``keep_if`` is asked once the folder is set aside, before anything is deleted: when it
    says True (a round has just claimed the folder as its base), the folder is put back and
    False is returned. A reader that looked while it was aside found it missing and restored
    it from its tarball; then the restored copy stays and the set-aside one is deleted.
    """
    path = _normal(folder)
    trash = path.parent / f".{path.name}.removing"
    if path.is_dir() and not path.is_symlink():
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(path, trash)
        _fsync_folder(path.parent)
        if keep_if is not None and keep_if():
            with contextlib.suppress(FileExistsError, OSError):
                if not path.exists():
                    os.rename(trash, path)
                    _fsync_folder(path.parent)
            if trash.exists():
                shutil.rmtree(trash)
            return False
    if trash.exists():
        shutil.rmtree(trash)
    return True


def remove_tarball(tarball: str) -> None:
    """Remove a tarball and its digest file; missing ones are fine."""
    for name in (digest_path(tarball), str(_normal(tarball))):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


# --- internals -----------------------------------------------------------------------------------


def _normal(uri: str) -> Path:
    """A local URI as an absolute, normalised path: a relative one is taken from the project
    folder, as the campaign's paths are (`config.paths.absolute`); symbolic links are not
    resolved, so a folder is named as the ledger names it."""
    return Path(os.path.abspath(storage.local_path(absolute(uri))))


def _members(folder: Path) -> Iterator[tuple[Path, str]]:
    """(path, member name) of every directory and regular file under ``folder``, sorted, with
    nothing followed through a link."""
    for current, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        base = Path(current)
        for name in sorted([*dirs, *files]):
            path = base / name
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                yield path, path.relative_to(folder).as_posix()


def _folder_listing(folder: Path) -> dict[str, int | None]:
    """Member name -> size (None for a directory), as `write_tarball` would store the folder."""
    if not folder.is_dir():
        return {}
    listing: dict[str, int | None] = {}
    for path, name in _members(folder):
        info = path.lstat()
        listing[name] = info.st_size if stat.S_ISREG(info.st_mode) else None
    return listing


def _add(archive: tarfile.TarFile, path: Path, name: str) -> None:
    info = archive.gettarinfo(str(path), arcname=name)
    # Owner names and ids say nothing about a checkpoint and differ between machines.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isdir():
        archive.addfile(info)
        return
    with path.open("rb") as handle:
        archive.addfile(info, handle)


def _plain_members_only(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter, and no links of any kind either: a checkpoint folder holds
    plain files and folders."""
    if not (member.isfile() or member.isdir()):
        raise tarfile.FilterError(f"member {member.name!r} is not a plain file or folder")
    # The data filter would strip a leading '/' and extract the member anyway: refused here.
    if member.name.startswith(("/", os.sep)) or ".." in Path(member.name).parts:
        raise tarfile.FilterError(f"member {member.name!r} points outside the folder")
    return tarfile.data_filter(member, path)


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``target``, flushed to disk and renamed onto it on success,
    removed on failure."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        # Readable like any other output of the campaign (mkstemp creates it private).
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every extracted file and folder to disk before the tree gets its final name."""
    for current, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(current, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_folder(Path(current))


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, handle: IO[bytes], hasher: hashlib._Hash) -> None:
        self._handle = handle
        self._hasher = hasher
        self.count = 0

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        self.count += len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


class _HashingReader:
    """A read-only file that hashes what is read through it."""

    def __init__(self, handle: IO[bytes], hasher: hashlib._Hash) -> None:
        self._handle = handle
        self._hasher = hasher

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass
