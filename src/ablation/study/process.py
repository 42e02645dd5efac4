"""A trial in its own process, started ahead: it fails alone and costs no start-up.

Each trial runs in a fresh (spawned) process, so nothing a trial leaves in
TensorFlow outlives it, and a crash or an out-of-memory kill loses only that
trial. The process is started before its trial comes: a :class:`TrialProcess`
imports TensorFlow, limits itself to its share of the cores
(:mod:`ablation.autotune.cores`) and opens the stores, then waits for its trial and the
decoded images (memory-mapped, so every process shares one copy).
:class:`SpareProcesses` keeps one such process ready per worker, starting the
next one while the current trial trains, so a trial's fixed cost is handing it
over and recording it. The trial's Optuna ``pid`` attribute names its process.

Epochs and the outcome come back through a pipe. If the process dies the trial is
recorded as failed with the reason; if the study's process dies, the trial's
process notices and ends too.

On a machine with GPUs each worker's processes compute on its GPU
(:mod:`ablation.autotune.gpus`: a :class:`~ablation.autotune.gpus.Placement` per
worker): they start with its ``CUDA_VISIBLE_DEVICES`` and memory growth, set before
TensorFlow is imported, and a spare process there only imports TensorFlow before its
trial comes (an op would initialise the GPU while the trial before it trains there).
The trial's run records its GPU in the ``ablation.gpu`` tag (its nvidia-smi index, or
``none``), as it records its threads in ``ablation.threads``.

Example::

    spares = SpareProcesses(sweep, threads=2)     # the first process starts now
    outcome = spares.take(more_to_come=False).run(spec, images_folder)
    spares.close()
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ablation.autotune.cores import threads_in_use, use_threads
from ablation.autotune.gpus import NO_GPU, Placement, spawn
from ablation.data.images import read_images
from ablation.model.training import EpochHook
from ablation.redaction import redact_output
from ablation.study.trial import TrialOutcome, TrialSpec, open_stores, run_trial
from ablation.sweep.config import Sweep
from ablation.tracking.records import TrialState
from ablation.tracking.tracker import Tracker

_OPEN_STORES = "open-stores"  # the study's message: its stores are set up


class TrialProcess:
    """A spawned process that gets ready for one trial of ``sweep``, then runs it, with
    ``threads`` threads where ``placement`` says (default: no GPU of its own, nothing set)."""

    def __init__(self, sweep: Sweep, threads: int, placement: Placement | None = None) -> None:
        placement = placement or Placement()
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe(duplex=True)
        args = (sweep, threads, placement.gpu, child_end, os.getpid())
        self.process = spawn(context, _child_main, args, placement.environment)
        child_end.close()

    def open_stores(self) -> None:
        """Let the process open the stores (once the study's process has set them up)."""
        try:
            self._connection.send(_OPEN_STORES)
        except OSError:  # it died: run() says so
            pass

    def run(
        self,
        spec: TrialSpec,
        images_folder: Path,
        on_epoch: EpochHook | None = None,
        stop: threading.Event | None = None,
    ) -> TrialOutcome:
        """Run ``spec`` on the decoded images in ``images_folder`` and wait for its outcome.

        On ``KeyboardInterrupt`` (or when ``stop`` is set, by another thread) the
        process is stopped and ``KeyboardInterrupt`` propagates.
        """
        outcome: TrialOutcome | None = None
        try:
            self._connection.send((spec, str(images_folder)))
            outcome = self._receive(on_epoch, stop)
            if outcome is None:
                self.process.join()
        except (BrokenPipeError, ConnectionResetError):  # it died before its trial
            self.process.join(10)
        except BaseException:
            self.close()
            raise
        finally:
            self._connection.close()
        if outcome is None:
            code = self.process.exitcode
            reason = (
                f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
            )
            outcome = spec.outcome(TrialState.FAIL, error=f"the trial's process died ({reason})")
            Tracker(spec.sweep.tracking, spec.sweep.experiment_name).fail_trial(
                spec.run_id, outcome.error or ""
            )
        return outcome

    def _receive(
        self, on_epoch: EpochHook | None, stop: threading.Event | None
    ) -> TrialOutcome | None:
        """Pass the epochs on until the outcome comes, or the process ends without one."""
        while True:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            if self._connection.poll(0.5):
                try:
                    kind, payload = self._connection.recv()
                except EOFError:
                    return None
                if kind == "epoch" and on_epoch is not None:
                    on_epoch(*payload)
                elif kind == "done":
                    return payload
            elif not self.process.is_alive():
                return None

    def close(self) -> None:
        """Stop the process (a spare that was not needed, or an interrupted trial)."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(10)
        self._connection.close()


class SpareProcesses:
    """One worker's supply of trial processes: one is always starting or ready."""

    def __init__(self, sweep: Sweep, threads: int, placement: Placement | None = None) -> None:
        self._sweep = sweep
        self.threads = threads
        self.placement = placement or Placement()
        self._stores_ready = False
        # the first process gets ready while the study sets up
        self._spare: TrialProcess | None = TrialProcess(sweep, threads, self.placement)

    def stores_ready(self) -> None:
        """The study's stores exist: processes may open them from now on."""
        self._stores_ready = True
        if self._spare is not None:
            self._spare.open_stores()

    def _start(self) -> TrialProcess:
        process = TrialProcess(self._sweep, self.threads, self.placement)
        if self._stores_ready:
            process.open_stores()
        return process

    def take(self, *, more_to_come: bool) -> TrialProcess:
        """A process for the trial about to start; if ``more_to_come``, the next one starts."""
        ready = self._spare
        if ready is None or not ready.process.is_alive():
            if ready is not None:
                ready.close()
            ready = self._start()
        self._spare = self._start() if more_to_come else None
        return ready

    def close(self) -> None:
        if self._spare is not None:
            self._spare.close()
            self._spare = None


def _child_main(sweep: Sweep, threads: int, gpu: str, connection: Any, parent_pid: int) -> None:
    """Entry point of a trial's process: get ready, wait for the trial, run it (on ``gpu``,
    a GPU's tag; its environment is set already: :func:`ablation.autotune.gpus.spawn`)."""

    # Ctrl-C and a closed terminal are the parent's to handle: it stops this process
    # and records the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    redact_output()
    _exit_with_parent(parent_pid)
    use_threads(threads)
    _warm_up(run_an_op=gpu == NO_GPU)
    try:
        if connection.recv() != _OPEN_STORES:
            return
        stores = open_stores(sweep)
        spec, images_folder = connection.recv()
    except EOFError:  # not needed after all
        return
    images = read_images(Path(images_folder))  # memory-mapped: shared, not copied

    def send(message: tuple[str, Any]) -> None:
        try:
            connection.send(message)
        except OSError:  # the study's process is gone: stop here, its next run recovers the trial
            os._exit(1)

    stores.tracker.tag_threads(spec.run_id, threads_in_use())
    stores.tracker.tag_gpu(spec.run_id, gpu)
    stores.optuna.trial(spec.trial_id).set_user_attr("pid", os.getpid())
    outcome = run_trial(
        spec, images, lambda epoch, metrics: send(("epoch", (epoch, metrics))), stores
    )
    send(("done", outcome))
    connection.close()
    # Everything is recorded: end now, without unwinding TensorFlow (seconds) on the trial's time.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warm_up(*, run_an_op: bool) -> None:
    """Import what a trial needs and, if ``run_an_op``, start TensorFlow's runtime, before
    the trial comes. Not on a GPU: the first op would initialise the process's GPU (a
    CUDA context, memory) while the trial before it still trains there."""
    import mlflow.keras  # noqa: F401  (imported on first use otherwise: inside the trial's time)
    import tensorflow as tf

    if run_an_op:
        tf.constant(0.0) + 1.0


def _exit_with_parent(parent_pid: int) -> None:
    """End this process if the study's process dies (e.g. SIGKILL), instead of training on."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
