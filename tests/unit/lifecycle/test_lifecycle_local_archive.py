"""Local archives: where tarballs go, the round trip, what verification catches, what extraction
refuses."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from tuneloop.lifecycle.local_archive import (
    LocalArchiveError,
    archive_location,
    digest_path,
    extract_tarball,
    read_digest,
    remove_folder,
    verify_tarball,
    write_tarball,
)


def make_folder(path: Path) -> Path:
    (path / "checkpoint" / "nested").mkdir(parents=True)
    (path / "empty").mkdir()
    (path / "manifest.json").write_text('{"checkpoint_s3_bucket": "x"}')
    (path / "checkpoint" / "model.safetensors").write_bytes(os.urandom(200_000))
    (path / "checkpoint" / "nested" / "config.json").write_text("{}")
    return path


def listing(folder: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink()
    }


def test_location_is_under_the_campaign_archive(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    inside = archive_location(str(root), str(root / "rounds" / "0001" / "demo-r0001-sft"))
    assert inside == str(root / "archive" / "rounds" / "0001" / "demo-r0001-sft.tar.gz")
    assert archive_location(f"file://{root}/", f"{root}/rounds/0001/x/") == str(
        root / "archive" / "rounds" / "0001" / "x.tar.gz"
    )
    outside = archive_location(str(root), str(tmp_path / "elsewhere" / "job"))
    expected = hashlib.sha256(str(tmp_path / "elsewhere" / "job").encode()).hexdigest()[:16]
    assert outside == str(root / "archive" / "external" / f"{expected}.tar.gz")


def test_round_trip_brings_back_identical_files(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "demo" / "rounds" / "0001" / "job")
    tarball = archive_location(str(tmp_path / "demo"), str(folder))
    digest, size = write_tarball(str(folder), tarball)
    assert size == Path(tarball).stat().st_size
    assert hashlib.sha256(Path(tarball).read_bytes()).hexdigest() == digest
    assert read_digest(tarball) == digest
    assert Path(digest_path(tarball)).read_text().split() == [digest, "job.tar.gz"]
    assert verify_tarball(tarball, digest, str(folder))
    before = listing(folder)

    remove_folder(str(folder))
    assert not folder.exists()
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())
    extract_tarball(tarball, str(folder), digest)
    assert listing(folder) == before
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())


def test_same_files_give_the_same_tarball(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "job")
    first, _ = write_tarball(str(folder), str(tmp_path / "a.tar.gz"))
    second, _ = write_tarball(str(folder), str(tmp_path / "b.tar.gz"))
    assert first == second


def test_links_are_neither_followed_nor_stored(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the folder")
    folder = make_folder(tmp_path / "job")
    (folder / "link").symlink_to(secret)
    (folder / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    tarball = str(tmp_path / "job.tar.gz")
    digest, _ = write_tarball(str(folder), tarball)
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "link" not in names and "linked-dir" not in names
    assert "checkpoint/model.safetensors" in names
    assert verify_tarball(tarball, digest, str(folder))


def test_verify_catches_a_wrong_digest_a_changed_folder_and_a_truncated_tarball(
    tmp_path: Path,
) -> None:
    folder = make_folder(tmp_path / "job")
    tarball = tmp_path / "job.tar.gz"
    digest, _ = write_tarball(str(folder), str(tarball))
    assert not verify_tarball(str(tarball), "0" * 64)
    assert not verify_tarball(str(tmp_path / "missing.tar.gz"), digest)

    (folder / "added.txt").write_text("new")
    assert verify_tarball(str(tarball), digest)  # the tarball itself is intact
    assert not verify_tarball(str(tarball), digest, str(folder))
    (folder / "added.txt").unlink()
    (folder / "manifest.json").write_text("a different size")
    assert not verify_tarball(str(tarball), digest, str(folder))

    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2])
    assert not verify_tarball(str(tarball), hashlib.sha256(data[: len(data) // 2]).hexdigest())


def test_writing_something_that_is_no_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalArchiveError, match="is not a folder"):
        write_tarball(str(tmp_path / "missing"), str(tmp_path / "x.tar.gz"))
    assert not (tmp_path / "x.tar.gz").exists()


def hostile_tarball(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        archive.addfile(ok, io.BytesIO(b"ok"))
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


def regular(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 4
    return info


@pytest.mark.parametrize(
    "member",
    [
        regular("/etc/evil"),
        regular("../evil"),
        regular("nested/../../evil"),
        symlink("link", "/etc/passwd"),
        symlink("inside-link", "fine.txt"),
        hardlink("hard", "fine.txt"),
        device("dev"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "symlink-out", "symlink-in", "hardlink", "dev"],
)
def test_unsafe_members_are_refused_and_nothing_is_left(
    tmp_path: Path, member: tarfile.TarInfo
) -> None:
    tarball = tmp_path / "hostile.tar.gz"
    digest = hostile_tarball(tarball, member, b"evil")
    target = tmp_path / "work" / "job"
    with pytest.raises(LocalArchiveError, match="cannot be extracted safely"):
        extract_tarball(str(tarball), str(target), digest)
    assert not target.exists()
    assert list((tmp_path / "work").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_extract_refuses_a_tarball_that_does_not_verify(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "job")
    tarball = str(tmp_path / "job.tar.gz")
    write_tarball(str(folder), tarball)
    with pytest.raises(LocalArchiveError, match="does not match its digest"):
        extract_tarball(tarball, str(tmp_path / "restored"), "f" * 64)
    assert not (tmp_path / "restored").exists()


def test_extract_never_overwrites_a_folder_with_files(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "job")
    tarball = str(tmp_path / "job.tar.gz")
    digest, _ = write_tarball(str(folder), tarball)
    with pytest.raises(LocalArchiveError, match="exists already"):
        extract_tarball(tarball, str(folder), digest)
    empty = tmp_path / "empty-target"
    empty.mkdir()
    extract_tarball(tarball, str(empty), digest)
    assert listing(empty) == listing(folder)


def test_a_removal_cut_short_is_finished_next_time(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "job")
    leftover = tmp_path / ".job.removing"
    os.rename(folder, leftover)  # as if the process died after the rename
    remove_folder(str(folder))
    assert not leftover.exists() and not folder.exists()
