"""A data folder's layout, found by looking at it, and its listing of image files.

Three layouts (:data:`LAYOUTS`):

* ``train+validation``: ``train/`` and ``validation/``, one sub-folder per class each;
  the validation folder is split per class into validation and test (the blog's);
* ``train+validation+test``: the same plus ``test/``, which is the test set;
* ``classes``: one folder of class sub-folders only; its images are split per
  class into train, validation and test (:func:`split_classes`).

``data.source`` is a local folder or an archive's URL (:mod:`ablation.data.sources`);
an archive's single top folder is looked into.

Example:
    >>> import numpy as np
    >>> train, val, test = split_classes(np.array([0] * 10 + [1] * 5), 0.2, 0.2, seed=0)
    >>> len(train), len(val), len(test), sorted(set(train) & set(test))
    (9, 3, 3, [])
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablation.errors import UserError

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

    def fingerprint(self) -> str:
        """A short hash of the listing (relative names and sizes): the dataset's identity."""
        digest = hashlib.sha256()
        for folder in LAYOUTS[self.layout]:
            for path, label in self.files[folder]:
                relative = path.relative_to(self.root).as_posix()
                digest.update(f"{relative}\0{label}\0{path.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]


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
    inner = _folders(folder)
    if len(inner) == 1 and _folders(inner[0]):  # an archive's single top folder
        return inner[0], "classes"
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
