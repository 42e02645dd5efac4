"""MLflow's system metrics on a trial's run: CPU, memory, disk, network, and GPU where
there is one, sampled while the trial trains.

MLflow's own :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`
samples them (``psutil``; ``pynvml`` for NVIDIA GPUs, installed with ``.[gpu]``) in a thread
of the trial's process and logs them on the trial's run by its id, never through the
global active run, so trials side by side keep their own. They show in the run's
"System metrics" tab as ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/gpu_0_utilization_percentage``, ...

The numbers are the machine's, not the trial's process's: with several workers on one
machine, every trial running at the same time records the same CPU load.

The monitor logs once per interval, and once more when the trial ends (the load since the
last sample), so a trial shorter than one interval has its sample too.

Example::

    with system_metrics(tracker.uri, run_id, interval=10.0):
        train(...)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

PREFIX = "system/"  # MLflow's prefix for the metrics it samples

# MLflow says "Started monitoring system metrics." and the like at INFO, in every trial.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str, interval: float | None) -> Iterator[None]:
    """Sample the machine every ``interval`` seconds onto run ``run_id`` of the store at
    ``uri`` while the block runs (``None``: no sampling)."""
    if interval is None:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval, samples_before_logging=1, tracking_uri=uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
