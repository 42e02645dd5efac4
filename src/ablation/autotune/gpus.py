"""The machine's GPUs shared by a study's workers, and the environment of every process
that may touch one.

TensorFlow maps nearly all of a GPU's memory in the first process that touches it, so
a second trial on that GPU would run out of memory. So every process of a study that
may touch a GPU computes with memory growth (``TF_FORCE_GPU_ALLOW_GROWTH=true``:
TensorFlow takes GPU memory as it needs it), and worker ``w`` of ``--workers N``
computes on the ``w % G``-th of the ``G`` GPUs chosen (``--gpus 0,2``; by default
every GPU found; ``--gpus none`` hides them all), seeing that one only:
``CUDA_VISIBLE_DEVICES=<its index>``, with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that
the index is ``nvidia-smi``'s (and NVML's, which MLflow's system metrics read).
The study's own process, and the timing processes it starts, are worker 0's.

GPUs are found with ``nvidia-smi -L`` where it exists, else in the driver's
``/proc/driver/nvidia/gpus`` (PCI bus order, as nvidia-smi counts them). A
``CUDA_VISIBLE_DEVICES`` already set limits them to the GPUs it names (nvidia-smi
indices or UUIDs; as in CUDA, the list ends at its first entry that names no GPU).
With no GPU found and no ``--gpus``, nothing is set: processes run as they always did.

How the environment gets there. The variables must be in a process's environment
before TensorFlow initialises its GPUs, and are safest there before it is imported.
The study's process sets its own once, before it starts any process or thread
(:func:`applied`), so every process it starts inherits memory growth from its first
instruction. But a trial process needs its own worker's GPU, and the workers are
threads of one process: setting ``os.environ`` around each start would give one
worker's GPU to another's process unless every start took a lock, and even then
``setenv`` in one thread races with ``getenv`` in C code of the others (libpq reading
``PGPASSWORD``, TensorFlow's threads). So the study's environment never changes per
process: :func:`spawn` starts the target through :func:`_bootstrap`, which sets the
worker's variables in the child, first thing, then calls the target. What runs in the
child before that (multiprocessing's start-up: the parent's main module and the
target's module imported, the arguments unpickled) imports no TensorFlow: this
package imports it only inside functions, and ``tests/study/test_gpus.py`` checks,
with an import hook in real trial processes, what the environment holds at the moment
TensorFlow is imported.

Example:
    >>> gpus = (Gpu(0, "NVIDIA H200"), Gpu(1, "NVIDIA H200"))
    >>> plan = GpuPlan(gpus, managed=True)
    >>> [plan.tag(worker) for worker in range(3)]
    ['0', '1', '0']
    >>> plan.environment(2)[VISIBLE], GpuPlan().environment(0)
    ('0', {})
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ablation.errors import UserError

ALLOW_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
VISIBLE = "CUDA_VISIBLE_DEVICES"
ORDER = "CUDA_DEVICE_ORDER"
NO_GPU = "none"  # --gpus none, and the tag of a trial that computed on no GPU
HIDDEN = "-1"  # CUDA_VISIBLE_DEVICES that hides every GPU
DRIVER = Path("/proc/driver/nvidia/gpus")
_SMI_LINE = re.compile(r"GPU (\d+): (.*?)(?: \(UUID: ([^)]*)\))?")
_INDICES = re.compile(r"\d+(,\d+)*")


@dataclass(frozen=True)
class Gpu:
    """One GPU, numbered as ``nvidia-smi`` numbers it."""

    index: int
    name: str
    uuid: str = ""

    def names(self, entry: str) -> bool:
        """Whether a ``CUDA_VISIBLE_DEVICES`` entry (an index, a UUID or its prefix) is this."""
        if entry.isdigit():
            return int(entry) == self.index
        return entry.startswith("GPU-") and bool(self.uuid) and self.uuid.startswith(entry)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """The GPUs in ``nvidia-smi -L``'s output (their MIG devices aside).

    >>> parse_nvidia_smi('''GPU 0: NVIDIA H200 (UUID: GPU-5a1)
    ...   MIG 1g.18gb     Device  0: (UUID: MIG-9)
    ... GPU 1: NVIDIA H200 (UUID: GPU-77c)''')  # doctest: +NORMALIZE_WHITESPACE
    [Gpu(index=0, name='NVIDIA H200', uuid='GPU-5a1'),
     Gpu(index=1, name='NVIDIA H200', uuid='GPU-77c')]
    """
    found = (_SMI_LINE.fullmatch(line.strip()) for line in text.splitlines())
    return [Gpu(int(m[1]), m[2].strip(), m[3] or "") for m in found if m]


def driver_gpus(driver: Path = DRIVER) -> list[Gpu]:
    """The GPUs the NVIDIA driver lists in ``driver`` (one folder per PCI bus id)."""
    gpus = []
    for index, info in enumerate(sorted(driver.glob("*/information"))):
        with contextlib.suppress(OSError):
            fields = dict(line.partition(":")[::2] for line in info.read_text().splitlines())
            fields = {name.strip(): value.strip() for name, value in fields.items()}
            gpus.append(Gpu(index, fields.get("Model", "?"), fields.get("GPU UUID", "")))
    return gpus


def installed_gpus(driver: Path = DRIVER) -> list[Gpu]:
    """This machine's NVIDIA GPUs: ``nvidia-smi -L`` where it answers, else the driver's."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            if done.returncode == 0:
                return parse_nvidia_smi(done.stdout)
    return driver_gpus(driver)


def usable(gpus: Sequence[Gpu], visible: str | None) -> list[Gpu]:
    """The GPUs of ``gpus`` that ``CUDA_VISIBLE_DEVICES=visible`` leaves (all if unset).

    >>> gpus = [Gpu(0, "A", "GPU-aa"), Gpu(1, "B", "GPU-bb"), Gpu(2, "C", "GPU-cc")]
    >>> [g.index for g in usable(gpus, "2,GPU-a")], usable(gpus, ""), usable(gpus, "-1")
    ([2, 0], [], [])
    >>> [g.index for g in usable(gpus, "1,7,0")]  # CUDA stops at an entry naming no GPU
    [1]
    """
    if visible is None:
        return list(gpus)
    chosen: list[Gpu] = []
    for entry in (part.strip() for part in visible.split(",")):
        gpu = next((gpu for gpu in gpus if gpu.names(entry)), None)
        if gpu is None:
            break
        if gpu not in chosen:
            chosen.append(gpu)
    return chosen


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[Gpu]:
    """The GPUs a process started with ``environ`` (default: this one's) may compute on."""
    return usable(installed_gpus(), (os.environ if environ is None else environ).get(VISIBLE))


@dataclass(frozen=True)
class Placement:
    """Where one worker's processes compute: their GPU's tag (its index, or ``none``) and
    the variables their environment starts with."""

    gpu: str = NO_GPU
    environment: Mapping[str, str] = field(default_factory=dict)

    @property
    def on_gpu(self) -> bool:
        return self.gpu != NO_GPU


@dataclass(frozen=True)
class GpuPlan:
    """Which GPU each worker's processes compute on: worker ``w`` on ``gpus[w % len(gpus)]``
    (none, with ``managed``: every GPU hidden; not ``managed``: nothing set)."""

    gpus: tuple[Gpu, ...] = ()
    managed: bool = False

    def gpu(self, worker: int) -> Gpu | None:
        return self.gpus[worker % len(self.gpus)] if self.gpus else None

    def tag(self, worker: int) -> str:
        """Worker ``worker``'s GPU as its trials' ``ablation.gpu`` tag records it."""
        gpu = self.gpu(worker)
        return NO_GPU if gpu is None else str(gpu.index)

    def environment(self, worker: int) -> dict[str, str]:
        """The variables worker ``worker``'s processes start with ({}: nothing to set)."""
        if not self.managed:
            return {}
        gpu = self.gpu(worker)
        visible = HIDDEN if gpu is None else str(gpu.index)
        return {ALLOW_GROWTH: "true", ORDER: "PCI_BUS_ID", VISIBLE: visible}

    def placement(self, worker: int) -> Placement:
        return Placement(self.tag(worker), self.environment(worker))

    def describe(self, workers: int) -> str | None:
        """One line for the run's output: which workers on which GPU (None: nothing set).

        >>> GpuPlan((Gpu(0, "H200"), Gpu(1, "H200")), managed=True).describe(3)
        'gpus: GPU 0 (H200): workers 0, 2; GPU 1 (H200): worker 1; memory growth on'
        """
        if not self.managed:
            return None
        if not self.gpus:
            return "gpus: none (--gpus none): every GPU hidden, trials on the CPU"
        shares = []
        for gpu in dict.fromkeys(self.gpu(w) for w in range(workers)):
            assert gpu is not None
            mine = [str(w) for w in range(workers) if self.gpu(w) == gpu]
            who = f"worker{'s' if len(mine) > 1 else ''} {', '.join(mine)}"
            shares.append(f"GPU {gpu.index} ({gpu.name}): {who}")
        return f"gpus: {'; '.join(shares)}; memory growth on"


def plan_gpus(
    option: str | None = None,
    *,
    installed: Sequence[Gpu] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GpuPlan:
    """The GPU plan of ``--gpus option`` (None: every usable GPU found, if any) on a machine
    with ``installed`` GPUs (default: found) and ``environ`` (default: this process's).

    Raises:
        UserError: ``--gpus`` is not ``none`` nor a list of usable GPUs, each once.
    """
    installed = installed_gpus() if installed is None else list(installed)
    visible = (os.environ if environ is None else environ).get(VISIBLE)
    allowed = usable(installed, visible)
    if option is None:
        return GpuPlan(tuple(allowed), managed=bool(allowed))
    if option.strip() == NO_GPU:
        return GpuPlan((), managed=True)
    wanted = option.replace(" ", "")
    found = ", ".join(str(gpu.index) for gpu in allowed)
    if not _INDICES.fullmatch(wanted):
        raise UserError(
            f"--gpus {option}: not a list of GPU indices; allowed: nvidia-smi -L's indices, "
            f"comma-separated (here: {found or 'no GPU found'}), or none"
        )
    indices = [int(part) for part in wanted.split(",")]
    twice = next((index for index in indices if indices.count(index) > 1), None)
    if twice is not None:
        raise UserError(
            f"--gpus {option}: GPU {twice} is named twice; name each GPU once (workers "
            "share the GPUs named: --workers 4 --gpus 0,1 runs two on each)"
        )
    by_index = {gpu.index: gpu for gpu in allowed}
    for index in indices:
        if index not in by_index:
            why = _why_not(index, installed, visible)
            raise UserError(
                f"--gpus {option}: {why}; allowed: {f'{found} or none' if found else 'none'}"
            )
    return GpuPlan(tuple(by_index[index] for index in indices), managed=True)


def _why_not(index: int, installed: Sequence[Gpu], visible: str | None) -> str:
    if not installed:
        return f"no GPU found on this machine (nvidia-smi -L, {DRIVER})"
    if any(gpu.index == index for gpu in installed):
        return f"GPU {index} is hidden by {VISIBLE}={visible}"
    return f"no GPU {index} on this machine"


@contextlib.contextmanager
def applied(environment: Mapping[str, str]) -> Iterator[None]:
    """This process with ``environment`` set in ``os.environ``; as it was, afterwards."""
    before = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def spawn(
    context: BaseContext,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    environment: Mapping[str, str],
) -> BaseProcess:
    """A started daemon process of ``context`` that sets ``environment``, then runs
    ``target(*args)`` (this process's environment stays as it is)."""
    process = context.Process(  # type: ignore[attr-defined]
        target=_bootstrap, args=(dict(environment), target, args), daemon=True
    )
    process.start()
    return process


def _bootstrap(environment: dict[str, str], target: Callable[..., Any], args: tuple) -> None:
    """A spawned process's first code: its environment, before anything imports TensorFlow."""
    os.environ.update(environment)
    target(*args)
