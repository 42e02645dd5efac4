"""A data folder's layout, found by looking at it, its listing of image files, the
listing's identity, and the seeded splits.

Three layouts (:data:`LAYOUTS`):

* ``train+validation``: ``train/`` and ``validation/``, one sub-folder per class each;
  the validation folder is split per class into validation and test (the blog's);
* ``train+validation+test``: the same plus ``test/``, which is the test set;
* ``classes``: one folder of class sub-folders only; its images are split per
  class into train, validation and test (:func:`split_classes`).

``data.source`` is a local folder or an archive's URL (:mod:`ablation.data.sources`);
an archive's single top folder is looked into.

**Identity.** The data's identity (:meth:`Listing.fingerprint`: the ``data_sha256``
param, and the key of the decoded images in ``data.cache_dir``) is a hash of each
image's name (relative to the data folder), label and content: the SHA-256 of its
bytes. A photo edited in place (same name, same size, even the same modification
time) is new data; the folder copied to another machine is the same data.

Each file's SHA-256 is remembered per machine, as git's index does, so that a rerun
reads no photo again: a memo in ``data.cache_dir`` (``file-sha256/``, one JSON file
per data folder) maps each file to its device, inode, size, modification time and
change time (nanoseconds) and its SHA-256; a file whose five are unchanged is not
read. The change time (ctime) is set by the kernel at every write and cannot be set
back (``touch -d``, ``cp -p`` and rsync set only the modification time), so an edit
that keeps the old modification time is still seen. A file changed in the last
:data:`RACY_NS` is hashed but not remembered: a second write within one timestamp
tick would leave its times as they were. The memo is replaced atomically under a
lock (:mod:`ablation.files`): processes hashing at once merge what they found.

Example:
    >>> import numpy as np
    >>> train, val, test = split_classes(np.array([0] * 10 + [1] * 5), 0.2, 0.2, seed=0)
    >>> len(train), len(val), len(test), sorted(set(train) & set(test))
    (9, 3, 3, [])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablation.errors import UserError
from ablation.files import locked, write_atomically

SPLIT_FOLDERS = ("train", "validation", "test")  # a split data folder's sub-folders
LAYOUTS = {
    "train+validation": ("train", "validation"),
    "train+validation+test": ("train", "validation", "test"),
    "classes": ("",),  # the folder itself holds the class folders
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SAYS = {
    "train+validation": "train/ + validation/ (test set split from validation/)",
    "train+validation+test": "train/ + validation/ + test/ (test set = test/)",
    "classes": "class folders only (split into train/validation/test by "
    "data.validation_fraction and data.test_fraction)",
}


@dataclass(frozen=True)
class Listing:
    """The files of a data folder, after ``limit_per_class``: what a study trains on."""

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]  # folder ("" in the classes layout) -> [(path, label)]
    skipped: list[Path] = field(default_factory=list)
    layout: str = "train+validation"

    def fingerprint(self, memo: Path | None = None) -> str:
        """A short hash of each image's relative name, label and SHA-256: the dataset's
        identity. With ``memo`` (a folder: ``data.cache_dir``), files unchanged since
        they were last hashed on this machine are not read again.

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("a/1.jpg", "b/1.jpg"):
        ...     (root / name).parent.mkdir()
        ...     _ = (root / name).write_bytes(b"photo " + name.encode())
        >>> listing = list_images(root)
        >>> before = listing.fingerprint(memo=root / "cache")
        >>> _ = (root / "a/1.jpg").write_bytes(b"PHOTO a/1.jpg")  # the same size
        >>> listing.fingerprint(memo=root / "cache") == before
        False
        """
        folders = LAYOUTS[self.layout]
        files = [(path, label) for folder in folders for path, label in self.files[folder]]
        relatives = [path.relative_to(self.root).as_posix() for path, _ in files]
        hashes = file_sha256s(self.root, relatives, memo)
        digest = hashlib.sha256()
        for relative, (_, label), sha256 in zip(relatives, files, hashes, strict=True):
            digest.update(f"{relative}\0{label}\0{sha256}\n".encode())
        return digest.hexdigest()[:16]


RACY_NS = 2 * 10**9  # a file changed this recently is hashed but not remembered
HASH_THREADS = 4  # files read at once (hashlib hashes without the GIL; bench/README.md)
READ_BYTES = 2**20  # of a file, read and hashed at a time
_MEMO_FORMAT = 1


def file_sha256s(root: Path, relatives: list[str], memo: Path | None = None) -> list[str]:
    """The SHA-256 of each file ``root / relative``: from the memo in the folder ``memo``
    where the file's device, inode, size, modification and change times are the ones
    remembered, else read (and remembered)."""
    memo_file = None if memo is None else memo / "file-sha256" / f"{_short_hash(root)}.json"
    remembered = _read_memo(memo_file)
    now = time.time_ns()
    found: dict[str, str] = {}
    unread: dict[str, list[int]] = {}  # relative name -> its stat, to be read
    for relative in relatives:
        stat = os.stat(root / relative)
        key = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
        entry = remembered.get(relative)
        if entry is not None and entry[:5] == key:
            found[relative] = str(entry[5])
        else:
            unread[relative] = key
    names = list(unread)
    shares = [names[start::HASH_THREADS] for start in range(HASH_THREADS)]
    with ThreadPoolExecutor(HASH_THREADS) as pool:  # a share each: one hand-off per thread
        hashed = pool.map(_sha256s, [root] * len(shares), shares)
        for share, hashes in zip(shares, hashed, strict=True):
            found |= dict(zip(share, hashes, strict=True))
    learned = {  # a file changed within a timestamp tick of now may change again unseen
        relative: [*key, found[relative]]
        for relative, key in unread.items()
        if max(key[3], key[4]) < now - RACY_NS
    }
    if memo_file is not None and learned:
        with locked(memo_file):  # another process may have added its own since
            merged = _read_memo(memo_file) | learned
            content = json.dumps({"format": _MEMO_FORMAT, "root": str(root), "files": merged})
            write_atomically(memo_file, lambda partial: partial.write_text(content))
    return [found[relative] for relative in relatives]


def _sha256s(root: Path, relatives: list[str]) -> list[str]:
    """The SHA-256 of each file ``root / relative``, read a chunk at a time."""
    hashes = []
    for relative in relatives:
        digest = hashlib.sha256()
        with open(root / relative, "rb", buffering=0) as opened:
            while chunk := opened.read(READ_BYTES):
                digest.update(chunk)
        hashes.append(digest.hexdigest())
    return hashes


def _read_memo(memo_file: Path | None) -> dict[str, list[int | str]]:
    """A memo's entries (relative name -> device, inode, size, mtime, ctime, SHA-256);
    none if it is missing, of another format, or unreadable (then it is rewritten)."""
    try:
        content = json.loads(memo_file.read_text()) if memo_file else {}
    except (OSError, ValueError):
        return {}
    return content.get("files", {}) if content.get("format") == _MEMO_FORMAT else {}


def _short_hash(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_layout(folder: Path, source: str) -> tuple[Path, str]:
    """The folder holding the data (``folder`` or its single sub-folder) and its layout."""
    present = [name for name in SPLIT_FOLDERS if (folder / name).is_dir()]
    if present[:2] == ["train", "validation"]:
        return folder, "train+validation+test" if len(present) == 3 else "train+validation"
    if present:
        missing = [name + "/" for name in SPLIT_FOLDERS[:2] if name not in present]
        raise UserError(
            f"data.source: {source!r} has {' and '.join(p + '/' for p in present)} but no "
            f"{' and no '.join(missing)} (expected train/ and validation/, optionally test/, "
            "or class folders only)"
        )
    for inner in _folders(folder):  # an extracted archive's top folder
        if (inner / "train").is_dir() and (inner / "validation").is_dir():
            return find_layout(inner, source)
    tops = _folders(folder)
    if len(tops) == 1 and _folders(tops[0]):  # an archive's single top folder
        return tops[0], "classes"
    return folder, "classes"


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_images(
    root: Path, limit_per_class: int | None = None, layout: str | None = None
) -> Listing:
    """List the class folders and image files of each folder of the layout.

    Files are taken in natural order (``cat.2`` before ``cat.10``), so
    ``limit_per_class`` keeps the first N of each class in each folder.

    Raises:
        UserError: Fewer than two classes, classes that differ between splits,
            or a class folder with no images.
    """
    layout = layout or find_layout(root, str(root))[1]
    folders = LAYOUTS[layout]
    first = root / folders[0]
    class_names = [p.name for p in _folders(first)]
    if len(class_names) < 2:
        expected = "one sub-folder per class"
        if not folders[0]:
            expected += ", or train/ and validation/ (and test/) each holding them"
        raise UserError(
            f"data: {first} has {len(class_names)} class folder(s); "
            f"a classifier needs at least two ({expected})"
        )
    files: dict[str, list[tuple[Path, int]]] = {}
    skipped: list[Path] = []
    for folder in folders:
        found = [p.name for p in _folders(root / folder)]
        if found != class_names:
            raise UserError(
                f"data: {root / folder} has classes {found}, but {folders[0]}/ has {class_names}"
            )
        files[folder] = []
        for label, name in enumerate(class_names):
            entries = sorted(
                (p for p in (root / folder / name).iterdir() if p.is_file()), key=_natural_key
            )
            images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
            skipped += [p for p in entries if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if not images:
                raise UserError(
                    f"data: {root / folder / name} has no images "
                    f"(allowed: {', '.join(IMAGE_EXTENSIONS)})"
                )
            files[folder] += [(p, label) for p in images[:limit_per_class]]
    return Listing(root=root, class_names=class_names, files=files, skipped=skipped, layout=layout)


def split_validation(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of the validation folder, per class, into validation and test.

    Deterministic in ``seed``; the two parts never overlap and, where a class has at
    least two images, each part gets at least one of it.
    """
    rng = np.random.default_rng(seed)
    val, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * test_fraction))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.append(members[:n_test])
        val.append(members[n_test:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


def split_classes(
    labels: np.ndarray, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices of one pool of images, per class, into train, validation and test.

    Deterministic in ``seed``; the parts never overlap and, where a class has at least
    three images, each part gets at least one of it.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * validation_fraction))
        if n >= 3:
            n_test = min(max(n_test, 1), n - 2)
            n_val = min(max(n_val, 1), n - n_test - 1)
        for part, chosen in zip(
            parts, np.split(members, [n - n_val - n_test, n - n_test]), strict=True
        ):
            part.append(chosen)
    return tuple(np.sort(np.concatenate(part)) for part in parts)  # type: ignore[return-value]
