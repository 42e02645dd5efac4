"""The data's identity is its files' content: a photo edited in place is new data (new
``data_sha256``, freshly decoded arrays), a copy of the folder is the same data, and the
per-machine memo of file hashes is used, trusted only while a file's times are unchanged,
and merged by processes that write it at once."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ablation.data import folders
from ablation.data.folders import list_images
from ablation.data.images import decode, load_images
from ablation.sweep.sections import Data
from conftest import copy_images


def settled(root: Path) -> Path:
    """``root``, once its files' times are old enough for the memo to remember them."""
    time.sleep(folders.RACY_NS / 1e9 + 0.2)
    return root


def same_size_jpeg(original: bytes, image: Image.Image) -> bytes:
    """``image`` as a JPEG of exactly ``len(original)`` bytes: encoded small enough, then
    padded with comment segments after the start marker (which decoders skip)."""
    for quality in range(90, 0, -10):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        encoded = buffer.getvalue()
        if len(encoded) + 4 <= len(original):
            break
    padding, pad = b"", len(original) - len(encoded)
    while pad:
        size = pad if pad <= 60000 else 50000  # a segment is 4 bytes at least
        padding += b"\xff\xfe" + (size - 2).to_bytes(2, "big") + b"\0" * (size - 4)
        pad -= size
    return encoded[:2] + padding + encoded[2:]


def edit_in_place(photo: Path) -> None:
    """Mirror ``photo``, at the same size in bytes and with the same modification time."""
    before = photo.stat()
    original = photo.read_bytes()
    with Image.open(io.BytesIO(original)) as opened:
        mirrored = ImageOps.mirror(opened.convert("RGB"))
    photo.write_bytes(same_size_jpeg(original, mirrored))
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = photo.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert photo.read_bytes() != original


def test_a_photo_edited_in_place_at_the_same_size_and_time_is_new_data(tmp_path: Path) -> None:
    root = settled(copy_images(tmp_path / "data", per_class=4))
    config = Data(source=str(root), image_size=(32, 32), cache_dir=str(tmp_path / "cache"))
    first = load_images(config)
    memo = json.loads(next((tmp_path / "cache" / "file-sha256").glob("*.json")).read_text())
    assert len(memo["files"]) == 16  # remembered: the second load reads only what changed
    photo = root / "train" / "cats" / "cat.2.jpg"
    edit_in_place(photo)

    second = load_images(config)
    assert second.fingerprint != first.fingerprint
    assert first.folder is not None and second.folder is not None
    assert second.folder != first.folder and first.folder.is_dir()
    index = [p for p, _ in list_images(root).files["train"]].index(photo)
    assert not np.array_equal(second.x_train[index], first.x_train[index])
    assert np.array_equal(second.x_train[index], decode([photo], (32, 32))[0][0])  # decoded anew
    others = np.arange(len(first.y_train)) != index
    assert np.array_equal(second.x_train[others], first.x_train[others])
    assert np.array_equal(second.x_val, first.x_val)
    assert load_images(config.model_copy(update={"cache_dir": None})).fingerprint == (
        second.fingerprint  # the memo gave what reading every file gives
    )


def test_the_identity_is_the_content_wherever_the_folder_is(tmp_path: Path) -> None:
    here = copy_images(tmp_path / "here", per_class=3)
    there = shutil.copytree(here, tmp_path / "elsewhere" / "there")  # other inodes and times
    identity = list_images(here).fingerprint()
    assert list_images(there).fingerprint() == identity
    assert list_images(there).fingerprint(memo=tmp_path / "memo") == identity
    (there / "train" / "dogs" / "dog.1.jpg").rename(there / "train" / "dogs" / "dog.1b.jpg")
    assert list_images(there).fingerprint() != identity  # a name is part of it
    photo = here / "train" / "cats" / "cat.1.jpg"
    photo.write_bytes(photo.read_bytes())  # written again, the same bytes: the same data
    assert list_images(here).fingerprint() == identity


def test_the_memo_is_trusted_while_a_files_times_are_unchanged(tmp_path: Path) -> None:
    root = settled(copy_images(tmp_path / "data", per_class=2))
    listing = list_images(root)
    truth = listing.fingerprint()
    assert listing.fingerprint(memo=tmp_path) == truth
    memo_file = next((tmp_path / "file-sha256").glob("*.json"))
    photo = listing.files["validation"][-1][0]
    memo = json.loads(memo_file.read_text())
    entry = memo["files"][photo.relative_to(root).as_posix()]
    assert entry[5] == hashlib.sha256(photo.read_bytes()).hexdigest()
    entry[5] = "0" * 64  # a wrong hash under the file's own stat: a rerun takes it unread
    memo_file.write_text(json.dumps(memo))
    assert listing.fingerprint(memo=tmp_path) != truth
    os.chmod(photo, photo.stat().st_mode)  # the change time moves (nothing else does)
    assert listing.fingerprint(memo=tmp_path) == truth  # read again


def test_a_file_changed_just_now_is_not_remembered(tmp_path: Path) -> None:
    root = copy_images(tmp_path / "data", per_class=2)
    assert list_images(root).fingerprint(memo=tmp_path) == list_images(root).fingerprint()
    assert not (tmp_path / "file-sha256").exists()  # every file was copied just now


HASH_IN_A_PROCESS = """
import json, sys
from pathlib import Path
from ablation.data import folders
root, memo, relatives = sys.argv[1], sys.argv[2], sys.argv[3:]
print(json.dumps(folders.file_sha256s(Path(root), relatives, memo=Path(memo))))
"""


def test_processes_hashing_at_once_merge_the_memo(tmp_path: Path) -> None:
    root = settled(copy_images(tmp_path / "data", per_class=6))
    relatives = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert len(relatives) == 24
    jobs = [(str(root), relatives[start::4], str(tmp_path)) for start in range(4)]  # disjoint
    # Plain processes (a multiprocessing pool waits forever for a worker that dies).
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", HASH_IN_A_PROCESS, root_, memo, *part],
            stdout=subprocess.PIPE,
            text=True,
        )
        for root_, part, memo in jobs
    ]
    found = [json.loads(process.communicate(timeout=300)[0]) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4
    for (_, part, _), hashes in zip(jobs, found, strict=True):
        assert hashes == [hashlib.sha256((root / r).read_bytes()).hexdigest() for r in part]
    (memo_file,) = (tmp_path / "file-sha256").glob("*.json")
    assert len(json.loads(memo_file.read_text())["files"]) == 24  # every process's files
    assert sorted(p.name for p in memo_file.parent.iterdir()) == sorted(
        [memo_file.name, f"{memo_file.name}.lock"]  # no partial file left
    )
