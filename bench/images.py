"""Decoded images at ten times the blog's size: decoding, the cache on disk, and the memory
of N trial processes reading it at once.

    python bench/images.py                          # 10x the blog: 30,000 photos, 160x160
    python bench/images.py --scale 2 --limit 100    # a quick check (800 photos)
    python bench/images.py --workers 1 2 4 --copy   # also: each worker with a private copy

(a) Builds, in a temporary folder, a data folder ``--scale`` times the blog's from
``--data`` (the blog's train/validation, cats/dogs): each photo (the first ``--limit``
per class and split, if given) in ``--scale`` variants, flipped and/or cropped
differently and re-encoded as JPEG under new names, in the same layout (a pool of 2
processes, Pillow).

(b) Decodes it with ``load_images`` and a fresh ``cache_dir``, in a process of its own:
wall time, images/s, the cache folder's size on disk, and that process's peak memory
(before decoding, after importing TensorFlow; and its peak while decoding).

(c) For N in ``--workers``: N processes (multiprocessing spawn) each ``read_images``
the cache and iterate one epoch of ``train_dataset`` over all training images. Each
one's memory is sampled from ``/proc/PID/smaps_rollup`` every 0.2 s: peak Rss, Pss,
USS (Private_Clean + Private_Dirty) and Anonymous, next to its baseline after
importing TensorFlow. The images' pages are the cache files', in the page cache:
mapped by one worker alone they count in its USS as clean private pages (the page
cache's, dropped when memory is short, shared as soon as another process maps them);
a worker's own copy would count as Anonymous. What to look for: Anonymous above the
baseline far below the data size and the same for every N; Pss per worker falling
with N (the data shared between them).

With ``--identity``, only the data's identity instead (issue 27): the cost of hashing
every photo's bytes (``Listing.fingerprint``) against the listing's names and sizes
that it replaced, on copies of the blog's 3,000 photos and on ``--scale`` times as many
(each photo copied under new names: new files, new inodes); each figure the median of
``--repeats`` runs: the listing alone; names and sizes (one ``stat`` per file: what a
size + mtime + inode quick check costs too); the SHA-256 of every file with the page
cache warm, on 1 thread and on ``HASH_THREADS``, and cold (each file's pages dropped
with ``posix_fadvise(DONTNEED)`` first); a first run that writes the per-machine memo,
and a rerun that reads it.

Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHILD_TIMEOUT_S = 3600


def variant(task: tuple[Path, Path, int]) -> int:
    """Write the ``scale`` variants of one photo; how many were written."""
    from PIL import Image, ImageOps

    source, target_dir, scale = task
    written = 0
    with Image.open(source) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    stem, number = source.stem.split(".")[0], source.stem.split(".")[-1]
    for v in range(scale):
        picture = ImageOps.mirror(image) if v % 2 else image
        margin = 0.03 * (v // 2)  # 0, 3, 6, ... % cropped, from a side that changes with v
        left = int(width * margin) if v % 4 < 2 else 0
        top = int(height * margin) if v % 4 >= 2 else 0
        box = (left, top, width - int(width * margin) + left // 2, height - top // 2)
        picture = picture.crop(box)
        picture.save(target_dir / f"{stem}.{number}v{v}.jpg", quality=90)
        written += 1
    return written


def build_folder(data: Path, dest: Path, scale: int, limit: int | None) -> tuple[int, float]:
    """The variants of every photo of ``data`` in ``dest``; (images written, seconds)."""
    started = time.monotonic()
    tasks = []
    for split in ("train", "validation"):
        for class_dir in sorted((data / split).iterdir()):
            target = dest / split / class_dir.name
            target.mkdir(parents=True)
            photos = sorted(class_dir.glob("*.jpg"), key=lambda p: int(p.stem.split(".")[-1]))
            tasks += [(photo, target, scale) for photo in photos[:limit]]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        written = sum(pool.imap_unordered(variant, tasks, chunksize=16))
    return written, time.monotonic() - started


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """Rss, Pss, USS (Private_Clean + Private_Dirty) and Anonymous of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0]) / 1024
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": uss, "anon": fields["Anonymous"]}


class Sampler:
    """The peak of each memory figure of a process, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                now = memory_mib(self.pid)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                break  # the process has ended
            self.peak = {key: max(value, self.peak.get(key, 0.0)) for key, value in now.items()}
            self.stop.wait(0.2)

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return self.peak


def decode_child(source: str, size: int, cache_dir: str, results: Any) -> None:
    """Import TensorFlow, then ``load_images`` into ``cache_dir``; report to ``results``."""
    import tensorflow as tf  # noqa: F401  (imported first: the baseline includes it)

    from ablation.data.images import load_images
    from ablation.sweep.sections import Data

    baseline = memory_mib()
    started = time.monotonic()
    images = load_images(Data(source=source, image_size=(size, size), cache_dir=cache_dir))
    wall = time.monotonic() - started
    count = sum(len(images.split(split)[1]) for split in ("train", "val", "test"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put((baseline, wall, count, str(images.folder), peak, images.x_train.nbytes / 2**20))


def worker_child(
    folder: str, seed: int, copy: bool, together: Any, ready: Any, results: Any
) -> None:
    """Import TensorFlow, then read the cache and iterate one epoch over the training
    images; measure once more when every worker has, all of them still there."""
    import numpy as np
    import tensorflow as tf  # noqa: F401

    from ablation.data.images import read_images
    from ablation.data.pipeline import train_dataset

    ready.put(memory_mib())  # the baseline
    started = time.monotonic()
    images = read_images(Path(folder))
    x = np.array(images.x_train) if copy else images.x_train  # --copy: what np.load did
    batches = 0
    for _ in train_dataset(x, images.y_train, 32, seed=seed):
        batches += 1
    wall = time.monotonic() - started
    together.wait()  # every worker has read every image
    results.put((seed, wall, batches, memory_mib()))
    together.wait()  # and measured, before any of them ends


def decode(source: Path, size: int, cache_dir: Path) -> tuple[Path, float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    arguments = (str(source), size, str(cache_dir), results)
    process = context.Process(target=decode_child, args=arguments)
    process.start()
    sampler = Sampler(process.pid)  # type: ignore[arg-type]
    baseline, wall, count, folder, peak_rss, data_mib = results.get(timeout=CHILD_TIMEOUT_S)
    process.join()
    sampled = sampler.finish()
    on_disk = sum(p.stat().st_blocks * 512 for p in Path(folder).iterdir()) / 2**20
    print(
        f"(b) decode: {count} images in {wall:.1f} s = {count / wall:.0f} images/s; "
        f"cache {on_disk:.0f} MB on disk ({Path(folder).name}); x_train {data_mib:.0f} MiB"
    )
    print(
        f"    decoding process: after importing TensorFlow Rss {baseline['rss']:.0f} MiB, "
        f"Anonymous {baseline['anon']:.0f}; peak Rss {peak_rss:.0f} MiB (getrusage), "
        f"sampled peak Rss {sampled.get('rss', 0):.0f}, Anonymous {sampled.get('anon', 0):.0f}"
    )
    return Path(folder), data_mib


def workers(folder: Path, n: int, copy: bool, data_mib: float) -> None:
    context = multiprocessing.get_context("spawn")
    ready, results, together = context.Queue(), context.Queue(), context.Barrier(n)
    processes = [
        context.Process(
            target=worker_child, args=(str(folder), seed, copy, together, ready, results)
        )
        for seed in range(n)
    ]
    for process in processes:
        process.start()
    samplers = [Sampler(process.pid) for process in processes]  # type: ignore[arg-type]
    baselines = [ready.get(timeout=CHILD_TIMEOUT_S) for _ in processes]
    done = sorted(results.get(timeout=CHILD_TIMEOUT_S) for _ in processes)
    for process in processes:
        process.join()
    peaks = [sampler.finish() for sampler in samplers]
    label = " each with a private copy" if copy else ""
    base = max(baselines, key=lambda b: b["anon"])  # the workers start alike
    print(
        f"(c) {n} worker(s){label}; data (x_train) {data_mib:.0f} MiB; each worker's "
        f"baseline after importing TensorFlow: Rss {base['rss']:.0f} MiB, USS "
        f"{base['uss']:.0f}, Anonymous {base['anon']:.0f}"
    )
    for (seed, wall, batches, end), peak in zip(done, peaks, strict=True):
        print(
            f"    worker {seed}: epoch {wall:.1f} s ({batches} batches); "
            f"peak Rss {peak['rss']:.0f} MiB, Pss {peak['pss']:.0f}, USS {peak['uss']:.0f}, "
            f"Anonymous {peak['anon']:.0f} (+{peak['anon'] - base['anon']:.0f}); "
            f"at the end, all {n} there: Rss {end['rss']:.0f}, Pss {end['pss']:.0f}, "
            f"USS {end['uss']:.0f}, Anonymous {end['anon']:.0f}"
        )


def copy_folder(data: Path, dest: Path, scale: int) -> int:
    """``scale`` copies of every photo of ``data`` under new names in ``dest`` (its layout)."""
    written = 0
    for split in ("train", "validation"):
        for class_dir in sorted((data / split).iterdir()):
            target = dest / split / class_dir.name
            target.mkdir(parents=True)
            for photo in class_dir.glob("*.jpg"):
                for v in range(scale):
                    shutil.copyfile(photo, target / f"{photo.stem}c{v}.jpg")
                    written += 1
    return written


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache: the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def names_and_sizes(listing: Any) -> str:
    """The identity before issue 27: relative names, labels and sizes (one stat per file)."""
    digest = hashlib.sha256()
    for folder in listing.files:
        for path, label in listing.files[folder]:
            relative = path.relative_to(listing.root).as_posix()
            digest.update(f"{relative}\0{label}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def identity_costs(root: Path, repeats: int, tmp: Path) -> None:
    """The median (and range) of ``repeats`` timings of each way to identify ``root``."""
    from ablation.data import folders

    listing = folders.list_images(root)
    paths = [path for files in listing.files.values() for path, _ in files]
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    threads = folders.HASH_THREADS

    def one_thread() -> str:
        folders.HASH_THREADS = 1
        try:
            return listing.fingerprint()
        finally:
            folders.HASH_THREADS = threads

    def first_run() -> str:
        shutil.rmtree(tmp / "memo", ignore_errors=True)
        return listing.fingerprint(memo=tmp / "memo")

    ways: dict[str, tuple[Callable[[], object], Callable[[], object] | None]] = {
        "listing (list_images)": (lambda: folders.list_images(root), None),
        "names + sizes (before)": (lambda: names_and_sizes(listing), None),
        "SHA-256, warm, 1 thread": (one_thread, None),
        f"SHA-256, warm, {threads} threads": (listing.fingerprint, None),
        f"SHA-256, cold, {threads} threads": (listing.fingerprint, lambda: evict(paths)),
        "SHA-256 + writing the memo": (first_run, None),
        "rerun, memo read": (lambda: listing.fingerprint(memo=tmp / "memo"), None),
    }
    print(f"{root.name}: {len(paths)} photos, {megabytes:.0f} MB; median of {repeats} (range)")
    for name, (run, before) in ways.items():
        seconds = []
        for _ in range(repeats):
            if before is not None:
                before()
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
        print(
            f"    {name:<28} {statistics.median(seconds):8.3f} s  "
            f"({min(seconds):.3f}-{max(seconds):.3f})"
        )


def identity(data: Path, scale: int, repeats: int, tmp: Path) -> None:
    """:func:`identity_costs` on a copy of ``data`` and on ``scale`` copies of it."""
    from ablation.data.folders import RACY_NS

    for copies in (1, scale):
        root = tmp / f"photos_x{copies}"
        started = time.monotonic()
        written = copy_folder(data, root, copies)
        print(f"copied {written} photos in {time.monotonic() - started:.0f} s into {root}")
        time.sleep(RACY_NS / 1e9)  # old enough for the memo to remember them
        identity_costs(root, repeats, tmp / f"memo_x{copies}")
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cats_and_dogs"))
    parser.add_argument("--scale", type=int, default=10, help="variants of each photo")
    parser.add_argument("--limit", type=int, default=None, help="photos per class and split")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copy", action="store_true", help="also: workers with a private copy")
    parser.add_argument("--keep", type=Path, help="build the folder here and keep it")
    parser.add_argument("--identity", action="store_true", help="only the data's identity")
    parser.add_argument("--repeats", type=int, default=5, help="--identity: runs per figure")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-images-"))
    try:
        if args.identity:
            identity(args.data.resolve(), args.scale, args.repeats, tmp)
            return
        folder = args.keep or tmp / "cats_and_dogs_x"
        if not folder.exists():
            written, seconds = build_folder(args.data.resolve(), folder, args.scale, args.limit)
            print(
                f"(a) built {written} photos ({args.scale} variants each) in {seconds:.0f} s "
                f"in {folder}"
            )
        cache, data_mib = decode(folder, args.size, tmp / "cache")
        for n in args.workers:
            workers(cache, n, copy=False, data_mib=data_mib)
            if args.copy:
                workers(cache, n, copy=True, data_mib=data_mib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
