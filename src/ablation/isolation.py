"""A trial in its own process: nothing it leaves in TensorFlow outlives it, and it fails alone.

:func:`run_trial_isolated` spawns a fresh process that reads the decoded images
from a file and runs :func:`ablation.trial.run_trial`; its epochs and its
outcome come back through a pipe. If the process dies (killed, out of memory, a
crash in TensorFlow) the trial is recorded as failed with the reason; if the
study's process dies, the trial's process notices and ends too.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ablation.data import read_images
from ablation.records import TrialState
from ablation.redaction import redact_output
from ablation.tracking import Tracker
from ablation.training import EpochHook
from ablation.trial import TrialOutcome, TrialSpec, run_trial


def run_trial_isolated(
    spec: TrialSpec,
    images_file: Path,
    on_epoch: EpochHook | None = None,
    stop: threading.Event | None = None,
) -> TrialOutcome:
    """:func:`ablation.trial.run_trial` in a fresh (spawned) process.

    On ``KeyboardInterrupt`` (or when ``stop`` is set, by another thread) the
    process is stopped and ``KeyboardInterrupt`` propagates.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(spec, str(images_file), sender, os.getpid()), daemon=True
    )
    process.start()
    sender.close()
    outcome: TrialOutcome | None = None
    try:
        while True:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            if receiver.poll(0.5):
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    break
                if kind == "epoch" and on_epoch is not None:
                    on_epoch(*payload)
                elif kind == "done":
                    outcome = payload
            elif not process.is_alive():
                break
        process.join()
    except BaseException:
        process.terminate()
        process.join(10)
        raise
    finally:
        receiver.close()
    if outcome is None:
        code = process.exitcode
        reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        outcome = spec.outcome(TrialState.FAIL, error=f"the trial's process died ({reason})")
        Tracker(spec.sweep.tracking, spec.sweep.experiment_name).fail_trial(
            spec.run_id, outcome.error or ""
        )
    return outcome


def _child_main(spec: TrialSpec, images_file: str, sender: Any, parent_pid: int) -> None:
    """Entry point of a trial's process."""
    # Ctrl-C and a closed terminal are the parent's to handle: it stops this process
    # and records the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    redact_output()
    _exit_with_parent(parent_pid)

    def send(message: tuple[str, Any]) -> None:
        try:
            sender.send(message)
        except OSError:  # the study's process is gone: stop here, its next run recovers the trial
            os._exit(1)

    images = read_images(Path(images_file))
    outcome = run_trial(
        spec, images, on_epoch=lambda epoch, metrics: send(("epoch", (epoch, metrics)))
    )
    send(("done", outcome))
    sender.close()


def _exit_with_parent(parent_pid: int) -> None:
    """End this process if the study's process dies (e.g. SIGKILL), instead of training on."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
