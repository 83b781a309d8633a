"""featmatch.folders: one walk of a folder, one reader of image lists, for stitch and batch alike.

The files are never decoded here, so they hold a few bytes, not pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from featmatch.batching.inputs import list_images
from featmatch.cli import cli
from featmatch.errors import ConfigError
from featmatch.folders import folder_images, list_folder

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _folder(folder: Path) -> Path:
    """``10.jpg``, ``2.jpg``, ``sub/1.jpg``, a named pipe ``pipe.jpg`` and a folder named ``dir.jpg``."""
    (folder / "sub").mkdir(parents=True)
    (folder / "dir.jpg").mkdir()
    for name in ("10.jpg", "2.jpg", "sub/1.jpg"):
        (folder / name).write_bytes(b"x")
    os.mkfifo(folder / "pipe.jpg")
    return folder


def _count_walks(monkeypatch) -> list[str]:
    """The names of the folder walks (``Path.rglob``, ``Path.iterdir``) called from now on."""
    calls: list[str] = []
    for name in ("rglob", "iterdir"):
        real = getattr(Path, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Path, name, counted)
    return calls


def test_a_folder_is_walked_once_for_its_images_and_its_special_files(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "set")
    walks = _count_walks(monkeypatch)
    entries = list_images(folder)  # batch: recursive, the pipe listed last so that batch() can warn
    assert [e.name for e in entries] == ["2.jpg", "10.jpg", "sub/1.jpg", "pipe.jpg"]
    assert walks == ["rglob"]
    walks.clear()
    listing = list_folder(folder)  # stitch: this folder only
    assert [p.name for p in listing.images] == ["2.jpg", "10.jpg"]
    assert [p.name for p in listing.special] == ["pipe.jpg"]
    assert walks == ["iterdir"]


def test_image_list_txt_decides_without_a_walk_and_an_unlisted_pipe_is_not_reported(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "set")
    (folder / "image_list.txt").write_text("10.jpg 700.5  # focal\n\n# a comment\nsub/1.jpg\n")
    walks = _count_walks(monkeypatch)
    assert [e.name for e in list_images(folder)] == ["10.jpg", "sub/1.jpg"]
    assert list_folder(folder, recursive=True).special == ()
    assert walks == []
    # a pipe that the list names is still listed (and left out by batch() with a warning)
    (folder / "image_list.txt").write_text("pipe.jpg\n2.jpg\n")
    assert [e.name for e in list_images(folder)] == ["pipe.jpg", "2.jpg"]


def test_exclude_leaves_a_file_out_of_the_images_and_the_special_files(tmp_path):
    folder = _folder(tmp_path / "set")
    listing = list_folder(folder, exclude=[folder / "2.jpg", folder / "pipe.jpg"])
    assert [p.name for p in listing.images] == ["10.jpg"] and listing.special == ()
    assert [p.name for p in folder_images(folder, exclude=[folder / "10.jpg"])] == ["2.jpg"]


def test_the_list_reader_refuses_binary_data_for_image_list_txt_and_the_batch_list_file(tmp_path):
    folder = _folder(tmp_path / "set")
    (folder / "image_list.txt").write_bytes(PNG_HEAD)
    want = f"'{folder / 'image_list.txt'}' is not a text list of image names (it holds binary data)"
    for read in (folder_images, list_images):  # stitch's and batch's reading of the folder
        with pytest.raises(ConfigError) as err:
            read(folder)
        assert str(err.value) == want
    for name, hint in (("list.txt", ""), ("photo.jpg", "; is it an image? pass its folder")):
        listing = tmp_path / name  # batch's list file
        listing.write_bytes(PNG_HEAD)
        with pytest.raises(ConfigError) as err:
            list_images(listing)
        assert str(err.value) == f"'{listing}' is not a text list of image names (it holds binary data{hint})"
        res = CliRunner().invoke(cli, ["batch", str(listing), "-o", str(tmp_path / "r.jsonl")])
        assert res.exit_code == 2 and f"featmatch: error: {err.value}" in res.output, res.output


def test_an_unreadable_list_says_which_list_for_both_callers(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "set")
    (folder / "image_list.txt").write_text("2.jpg\n")
    listing = tmp_path / "list.txt"
    listing.write_text("set/2.jpg\n")

    def refused(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refused)  # running as root, chmod 000 would not stop a read
    for read, path in ((folder_images, folder), (list_images, folder), (list_images, listing)):
        where = folder / "image_list.txt" if path == folder else listing
        with pytest.raises(ConfigError, match="^cannot read the image list '(.*)': Permission denied$") as err:
            read(path)
        assert str(where) in str(err.value)


def test_list_lines_are_stripped_and_comment_lines_skipped_but_a_batch_name_keeps_its_spaces(tmp_path):
    folder = _folder(tmp_path / "set")
    (folder / "my photo #1.jpg").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"  # images\n\n  set/my photo #1.jpg  \r\n" + os.fsencode(folder / "2.jpg") + b"\n")
    assert [e.name for e in list_images(listing)] == ["set/my photo #1.jpg", str(folder / "2.jpg")]
    assert [e.path for e in list_images(listing)] == [folder / "my photo #1.jpg", folder / "2.jpg"]
    # image_list.txt: the first word of a line, "#" anywhere starts a comment
    (folder / "image_list.txt").write_text("  2.jpg 700 # focal\n#10.jpg\n")
    assert folder_images(folder) == [folder / "2.jpg"]
