from __future__ import annotations

import fsspec
import pytest

from matteforge.dataset.storage import (
    list_files,
    locate,
    read_bytes,
    redact_uri,
    write_bytes_atomic,
)


def test_list_files_recurses_sorts_and_filters(tmp_path):
    (tmp_path / "b").mkdir()
    for rel in ("z.JPG", "a.png", "b/c.jpeg", "notes.txt"):
        (tmp_path / rel).write_bytes(b"x")
    loc = locate(str(tmp_path))
    names = [p.rsplit("/", 1)[-1] for p in list_files(loc, [".jpg", ".jpeg", ".png"])]
    assert names == ["a.png", "c.jpeg", "z.JPG"]
    single = locate(str(tmp_path / "a.png"))
    assert list_files(single, [".png"]) == [single.root]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    loc = locate(str(tmp_path))
    write_bytes_atomic(loc, loc.path("deep/dir/f.bin"), b"payload")
    assert read_bytes(loc, loc.path("deep/dir/f.bin")) == b"payload"
    assert [p.name for p in (tmp_path / "deep/dir").iterdir()] == ["f.bin"]


def test_read_refuses_files_over_the_limit(tmp_path):
    (tmp_path / "big").write_bytes(b"0" * 100)
    loc = locate(str(tmp_path))
    with pytest.raises(ValueError, match="over the limit"):
        read_bytes(loc, loc.path("big"), max_bytes=99)


def test_memory_filesystem_round_trip():
    loc = locate("memory://mf-test/out")
    write_bytes_atomic(loc, loc.path("a/b.txt"), b"hi")
    assert list_files(loc) == [loc.path("a/b.txt")]
    assert loc.url(loc.path("a/b.txt")).startswith("memory://")
    fsspec.filesystem("memory").rm("/mf-test", recursive=True)


def test_credentials_are_removed_from_uris():
    assert redact_uri("s3://AKIA:secret@bucket/key.jpg") == "s3://bucket/key.jpg"
    assert redact_uri("/plain/path@2x.png") == "/plain/path@2x.png"
