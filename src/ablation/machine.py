"""What a timing on this machine depends on, and the per-machine cache of timings.

``precision: auto`` (:mod:`ablation.precision`) and ``feature_batch_size: auto``
(:mod:`ablation.feature_batch`) are decided by timing a few steps on the machine at
hand, once: the decisions are kept in a JSON file in ``data.cache_dir`` under the
machine's key (:func:`machine_key` of :func:`machine_identity`), so that a folder
shared by several machines keeps each one's own.

A cache file is ``{"format": 1, "machines": {key: {"machine": identity, "shapes":
{shape key: entry}}}}``; :func:`read_machines` drops entries a caller's check
rejects (they are timed again), and :func:`add_shapes` adds entries atomically.

Example:
    >>> identity = machine_identity(threads=2)
    >>> identity["cores"], len(machine_key(identity))
    (2, 16)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ablation.cores import available_cores, use_threads
from ablation.errors import first_line

log = logging.getLogger(__name__)

_CACHE_FORMAT = 1  # a cache file of another format is ignored (timed again)


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


S = TypeVar("S", bound=_Keyed)


def machine_identity(threads: int | None = None) -> dict[str, Any]:
    """What a timing depends on besides the shape (TensorFlow not imported): CPU model and
    flags, a trial's threads (default: every core), TensorFlow and Keras, NVIDIA GPUs."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = " ".join(sorted(set((fields.get("flags") or fields.get("Features") or "").split())))
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cores": threads or available_cores(),
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "gpus": _gpu_names(),
    }


def machine_key(machine: dict[str, Any]) -> str:
    """A short hash of a machine's identity (the cache's key)."""
    return hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]


@functools.cache
def _version(package: str) -> str:
    """The installed version of the distribution(s) giving ``package`` (tensorflow-cpu...)."""
    names = metadata.packages_distributions().get(package, [])
    return ", ".join(sorted(f"{name} {metadata.version(name)}" for name in set(names))) or "none"


def _gpu_names() -> list[str]:
    """The NVIDIA driver's GPU models (Linux), and which of them CUDA may use if that is set."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        with contextlib.suppress(OSError):
            lines = info.read_text().splitlines()
            names += [line.partition(":")[2].strip() for line in lines if line.startswith("Model:")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [*names, f"CUDA_VISIBLE_DEVICES={visible}"] if names and visible is not None else names


def in_spawned_process(function: Callable[..., Any], *args: Any, threads: int | None) -> Any:
    """``function(*args)`` in a fresh spawned process (a timing undisturbed by this process's
    TensorFlow state), with a trial's ``threads`` (default: TensorFlow's own)."""
    context = multiprocessing.get_context("spawn")
    limit: dict[str, Any] = {"initializer": use_threads, "initargs": (threads,)} if threads else {}
    with ProcessPoolExecutor(max_workers=1, mp_context=context, **limit) as pool:
        return pool.submit(function, *args).result()


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Hold the cache file's lock: one timing at a time per cache folder, none doubled."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(f"{cache.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_machines(path: Path, valid: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """machine key -> {"machine", "shapes": {shape key: entry}}, keeping the entries that
    ``valid`` accepts; a missing, unreadable or foreign file reads as empty."""
    try:
        data = json.loads(path.read_text())
        machines = data["machines"] if data.get("format") == _CACHE_FORMAT else {}
        for entry in machines.values():
            entry["shapes"] = {k: v for k, v in entry["shapes"].items() if valid(v)}
        return dict(machines)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s is unreadable (%s); timing again", path, first_line(exc))
        return {}


def add_shapes(
    path: Path,
    key: str,
    machine: dict[str, Any],
    shapes: dict[str, dict[str, Any]],
    valid: Callable[[dict[str, Any]], bool],
) -> None:
    """Add ``shapes`` to the machine's entry: written beside, then renamed over the file, so
    that a reader (another machine on a shared folder) sees the old file or the new one."""
    machines = read_machines(path, valid)
    entry = machines.setdefault(key, {"machine": machine, "shapes": {}})
    entry["shapes"].update(shapes)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps({"format": _CACHE_FORMAT, "machines": machines}, indent=1))
    partial.replace(path)


def decide_once(
    setting: str,
    shapes: Sequence[S],
    machine: dict[str, Any],
    cache: Path | None,
    *,
    measure: Callable[[list[S]], Sequence[Any]],
    decide: Callable[[Any], dict[str, Any]],
    fallback: dict[str, Any],
    valid: Callable[[dict[str, Any]], bool],
) -> dict[str, dict[str, Any]]:
    """Each shape's decision (by its key, with ``"cached"``): from ``cache``, or ``measure``d
    for the shapes it lacks and ``decide``d from their timings, then added to it.

    One timing at a time per cache file (none doubled, none slowed by another); a timing
    that fails gives the missing shapes ``fallback``, not cached.
    """
    key = machine_key(machine)
    with locked(cache) if cache else contextlib.nullcontext():
        known = read_machines(cache, valid).get(key, {}).get("shapes", {}) if cache else {}
        decided = {s.key: {**known[s.key], "cached": True} for s in shapes if s.key in known}
        missing = [shape for shape in shapes if shape.key not in known]
        if not missing:
            return decided
        log.info(
            "%s: timing %s on this machine, once (kept in %s)",
            setting,
            "; ".join(s.key for s in missing),
            cache or "no cache folder",
        )
        try:
            measured = measure(missing)
        except Exception as exc:  # a crashed or failing timing must not stop the study
            log.warning("%s: the timing failed (%s); %s", setting, first_line(exc), fallback)
            return {**decided, **{s.key: {**fallback, "cached": False} for s in missing}}
        fresh = {s.key: decide(t) for s, t in zip(missing, measured, strict=True)}
        if cache is not None:
            add_shapes(cache, key, machine, fresh, valid)
    return {**decided, **{k: {**v, "cached": False} for k, v in fresh.items()}}
