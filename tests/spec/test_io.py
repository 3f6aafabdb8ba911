"""Atomic writes: the umask's modes whatever the writer does, and folders swapped in
so that a failure leaves the old folder whole."""

from __future__ import annotations

import os

import pytest

from saesuite.spec import io


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_file_replaced_by_its_writer_still_gets_the_umask_mode(tmp_path):
    target = tmp_path / "w.safetensors"
    with io.atomic_path(target) as tmp:
        # what safetensors' save_file does: a new file, mode 0600, in its place
        fresh = tmp_path / "fresh"
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"weights")
        os.close(fd)
        os.replace(fresh, tmp)
    assert target.read_bytes() == b"weights"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask()


def test_a_folder_built_beside_gets_the_umask_mode(tmp_path):
    built = io.new_dir_beside(tmp_path / "release" / "repo")
    assert built.parent == tmp_path / "release" and built.name.startswith(".repo.")
    assert built.stat().st_mode & 0o777 == 0o777 & ~umask()


def test_swap_in_replaces_a_folder_and_keeps_it_when_that_fails(tmp_path, monkeypatch):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new = io.new_dir_beside(out)
    (new / "new.txt").write_text("new")
    io.swap_in(new, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # nothing left beside

    again = io.new_dir_beside(out)
    (again / "newer.txt").write_text("newer")
    rename = os.rename

    def refuse_the_new_one(src, dst):
        if os.fspath(src) == os.fspath(again):
            raise PermissionError(13, "Permission denied", os.fspath(dst))
        return rename(src, dst)

    monkeypatch.setattr(io.os, "rename", refuse_the_new_one)
    with pytest.raises(PermissionError):
        io.swap_in(again, out)
    assert (out / "new.txt").read_text() == "new"  # the old folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [again.name, "repo"]
