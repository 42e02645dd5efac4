"""What a timing on this machine depends on, and the per-machine cache of timings.

``precision: auto`` (:mod:`ablation.autotune.precision`) and ``feature_batch_size: auto``
(:mod:`ablation.autotune.feature_batch`) are decided by timing a few steps on the machine at
hand, once: the decisions are kept in a JSON file in ``data.cache_dir`` under the
machine's key (:func:`machine_key` of :func:`machine_identity`), so that a folder
shared by several machines keeps each one's own.

A cache file is ``{"format": 1, "machines": {key: {"machine": identity, "shapes":
{shape key: entry}}}}``; :func:`read_machines` drops entries a caller's check
rejects (they are timed again), and :func:`add_shapes` adds entries atomically.

A timing runs in a spawned process (:func:`in_spawned_process`) that computes as a
trial does: with a trial's threads and, where there are GPUs, on the GPU this process
leaves visible (a study's: its worker 0's, :mod:`ablation.autotune.gpus`), with memory
growth; the machine's identity names those GPUs.

Example:
    >>> identity = machine_identity(threads=2)
    >>> identity["cores"], len(machine_key(identity))
    (2, 16)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import platform
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ablation.autotune.cores import available_cores, use_threads
from ablation.autotune.gpus import ALLOW_GROWTH, visible_gpus
from ablation.errors import first_line
from ablation.files import locked, write_atomically
from ablation.sweep.config import Sweep
from ablation.sweep.pretrained import PretrainedWeights

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
    """The models of the NVIDIA GPUs a process started from this one computes on: those
    its ``CUDA_VISIBLE_DEVICES`` leaves (all when unset), as ``nvidia-smi -L`` names them
    (else the driver: :func:`ablation.autotune.gpus.installed_gpus`)."""
    return [gpu.name for gpu in visible_gpus()]


def in_spawned_process(function: Callable[..., Any], *args: Any, threads: int | None) -> Any:
    """``function(*args)`` in a fresh spawned process (a timing undisturbed by this process's
    TensorFlow state), with a trial's ``threads`` (default: TensorFlow's own) and, where
    it sees a GPU, memory growth (it inherits this process's ``CUDA_VISIBLE_DEVICES``)."""
    context = multiprocessing.get_context("spawn")
    environment = {ALLOW_GROWTH: "true"} if visible_gpus() else {}
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=context,
        initializer=_start_timing,
        initargs=(environment, threads),
    ) as pool:
        return pool.submit(function, *args).result()


def _start_timing(environment: dict[str, str], threads: int | None) -> None:
    """A timing process's first code: its environment, then its threads (TensorFlow's)."""
    os.environ.update(environment)
    if threads:
        use_threads(threads)


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
    """Add ``shapes`` to the machine's entry, written atomically: a reader (another machine
    on a shared folder) sees the old file or the new one."""
    machines = read_machines(path, valid)
    entry = machines.setdefault(key, {"machine": machine, "shapes": {}})
    entry["shapes"].update(shapes)
    text = json.dumps({"format": _CACHE_FORMAT, "machines": machines}, indent=1)
    write_atomically(path, lambda partial: partial.write_text(text))


@dataclass(frozen=True)
class AutoSetting(Generic[S]):
    """A sweep setting whose ``auto`` is decided by timing this machine, once.

    Args:
        train_field: The ``train`` field whose ``auto`` this decides, e.g. ``precision``.
        shapes: What to time for a sweep: ``{backbone: shape}`` (none: nothing to decide).
        decide: A shape's decision (a JSON-able dict) from its timing.
        fallback: The decision where the timing fails (not cached): its one key names the
            decided value in every decision (e.g. ``{"policy": "float32"}``).
        valid: Whether a cached decision can be used (else it is timed again).
        notes: Added to the record of the decisions (e.g. the margin a policy had to win by).
        cache_file: The cache file's name in ``data.cache_dir`` (default ``TRAIN_FIELD.json``).
    """

    train_field: str
    shapes: Callable[[Sweep], dict[str, S]]
    decide: Callable[[Any], dict[str, Any]]
    fallback: dict[str, Any]
    valid: Callable[[dict[str, Any]], bool]
    notes: dict[str, Any] = field(default_factory=dict)
    cache_file: str = ""

    @property
    def name(self) -> str:
        return f"{self.train_field}: auto"

    @property
    def chosen(self) -> str:
        """The key of the decided value in a decision."""
        return next(iter(self.fallback))

    @property
    def cache_name(self) -> str:
        return self.cache_file or f"{self.train_field}.json"


def resolve(
    setting: AutoSetting[S],
    sweep: Sweep,
    measure: Callable[[Sequence[S], PretrainedWeights], Sequence[Any]],
    threads: int | None = None,
) -> tuple[Sweep, dict[str, Any]]:
    """The sweep with ``setting``'s ``auto`` replaced by ``{backbone: decision}``, and
    the record of what decided it (``{"machine", "backbones": {backbone: {"shape", ...,
    "cached"}}, **notes}``); a sweep whose setting is not ``auto``, or that has nothing
    to time, as it is, and ``{}``.

    Each shape's decision comes from the cache in ``data.cache_dir``, or is timed by
    ``measure`` for the shapes it lacks, then added to it (the machine's identity counts
    ``threads``, a trial process's). One timing at a time per cache file (none doubled,
    none slowed by another); a timing that fails gives the missing shapes
    ``setting.fallback``, not cached.
    """
    shapes = setting.shapes(sweep)
    if getattr(sweep.train, setting.train_field) != "auto" or not shapes:
        return sweep, {}
    machine = machine_identity(threads)
    cache = Path(sweep.data.cache_dir) / setting.cache_name if sweep.data.cache_dir else None
    decided = _decide_shapes(
        setting, list(shapes.values()), machine, cache, lambda todo: measure(todo, sweep.model)
    )
    backbones = {b: {"shape": s.key, **decided[s.key]} for b, s in shapes.items()}
    chosen = {backbone: entry[setting.chosen] for backbone, entry in backbones.items()}
    train = sweep.train.model_copy(update={setting.train_field: chosen})
    record = {"machine": machine, "backbones": backbones, **setting.notes}
    return sweep.model_copy(update={"train": train}), record


def _decide_shapes(
    setting: AutoSetting[S],
    shapes: list[S],
    machine: dict[str, Any],
    cache: Path | None,
    measure: Callable[[list[S]], Sequence[Any]],
) -> dict[str, dict[str, Any]]:
    """Each shape's decision by its key, with ``"cached"``."""
    key = machine_key(machine)
    with locked(cache) if cache else contextlib.nullcontext():
        known = read_machines(cache, setting.valid).get(key, {}).get("shapes", {}) if cache else {}
        decided = {s.key: {**known[s.key], "cached": True} for s in shapes if s.key in known}
        missing = [shape for shape in shapes if shape.key not in known]
        if not missing:
            return decided
        log.info(
            "%s: timing %s on this machine, once (kept in %s)",
            setting.name,
            "; ".join(s.key for s in missing),
            cache or "no cache folder",
        )
        try:
            timings = measure(missing)
        except Exception as exc:  # a crashed or failing timing must not stop the study
            log.warning(
                "%s: the timing failed (%s); %s", setting.name, first_line(exc), setting.fallback
            )
            return {**decided, **{s.key: {**setting.fallback, "cached": False} for s in missing}}
        fresh = {s.key: setting.decide(t) for s, t in zip(missing, timings, strict=True)}
        if cache is not None:
            add_shapes(cache, key, machine, fresh, setting.valid)
    return {**decided, **{k: {**v, "cached": False} for k, v in fresh.items()}}
