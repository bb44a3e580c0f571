"""Dask distributed as the batch engine: finding it, starting or joining a cluster, and the worker set-up.

Dask is optional. Without it a batch runs serially in this process, and `DASK_HINT` says how to get
workers. Each worker loads the model once (the per-process cache of core/batch/model_cache.py, filled
by `FootprintWorkerPlugin.setup`) and, where there are GPUs, pins one device: worker k of a LocalCluster
uses cuda:k mod the GPU count; a `dask worker` started with CUDA_VISIBLE_DEVICES=i sees one GPU.

Talking to a scheduler is bounded: dask's own connect waits forever for a peer that accepts the
connection but never answers, so each call runs in a helper thread while this one waits at most
`CONNECT_TIMEOUT_S` and watches for a cancel (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..common.callbacks import CancelCallback, check_canceled
from ..common.errors import CanceledError, InputError

DASK_HINT = (
    "Dask is not installed, so the blocks ran one after another in this process. For parallel workers "
    'install it into the plugin\'s Python: `.venv/bin/pip install "dask[distributed]>=2024.8,<2027"` '
    "(see requirements.txt), then use --workers N or --scheduler tcp://host:8786."
)
# Set in each worker process by the plugin; read by core/batch/blocks.py when a block asks for device "auto".
PINNED_DEVICE: Optional[str] = None
# The longest wait for a scheduler to accept and answer a connection (and for each call to it while starting).
CONNECT_TIMEOUT_S = 30.0
# How long a scheduler without workers is given to get one.
WORKER_WAIT_S = 60.0
# Installing the worker set-up waits for every worker to load the model.
REGISTER_TIMEOUT_S = 300.0


def dask_available() -> bool:
    """True when dask.distributed imports (a broken or hidden install counts as missing)."""
    try:
        import distributed  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a half-installed package
        return False
    return True


def default_workers() -> int:
    """One worker per GPU where there are GPUs, else one per CPU core."""
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return int(torch.cuda.device_count())
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """torch threads for each of `workers` local workers: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _python_executable() -> Optional[str]:
    """A Python interpreter for spawned workers: inside QGIS, sys.executable is the qgis binary."""
    if Path(sys.executable).name.lower().startswith("python"):
        return None
    candidates = [
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}",
        Path(sys.base_prefix) / "bin" / "python3",
        Path(sys.base_prefix) / "python.exe",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return shutil.which("python3")


@dataclass
class ClusterHandle:
    """A dask Client and, for a cluster we started, the LocalCluster to close with it."""

    client: Any
    cluster: Any = None
    description: str = ""
    workers: int = 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=10)


def bounded(call: Callable[[], Any], seconds: float, is_canceled: Optional[CancelCallback], on_timeout: str) -> Any:
    """call() in a helper thread; InputError(on_timeout) after `seconds`, CanceledError on a cancel.

    A call given up on keeps running in its daemon thread; a client it returns later is closed there."""
    box: dict[str, Any] = {}
    gate = threading.Lock()

    def target() -> None:
        try:
            value = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            value, box["error"] = None, exc
        with gate:
            if box.get("abandoned") and hasattr(value, "close"):
                with contextlib.suppress(Exception):
                    value.close()
            box["value"] = value

    thread = threading.Thread(target=target, name="footprint-dask-call", daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    try:
        while thread.is_alive():
            check_canceled(is_canceled)
            if time.monotonic() > deadline:
                raise InputError(on_timeout)
            thread.join(0.1)
    except BaseException:
        with gate:
            box["abandoned"] = True
            if hasattr(box.get("value"), "close"):
                with contextlib.suppress(Exception):
                    box["value"].close()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def _connect(scheduler: str, is_canceled: Optional[CancelCallback]) -> Any:
    from distributed import Client

    fix = "Start it with `dask scheduler` on that machine and check the address and port (default tcp://HOST:8786)."
    silent = (
        f"The Dask scheduler at {scheduler} did not answer within {CONNECT_TIMEOUT_S:g} s: nothing is listening "
        f"there, or what is listening is not a Dask scheduler. {fix}"
    )
    try:
        return bounded(
            lambda: Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"), CONNECT_TIMEOUT_S, is_canceled, silent
        )
    except (InputError, CanceledError):
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ... all mean "cannot reach it"
        raise InputError(f"Cannot reach the Dask scheduler at {scheduler} ({exc}). {fix}") from None


def _worker_count(client: Any, scheduler: str, is_canceled: Optional[CancelCallback]) -> int:
    """The scheduler's workers, waiting up to WORKER_WAIT_S for a first one (cancelable)."""
    silent = f"The Dask scheduler at {scheduler} stopped answering. Check that it still runs."

    def count() -> int:
        info = bounded(client.scheduler_info, CONNECT_TIMEOUT_S, is_canceled, silent)
        return len(info.get("workers", {}))

    deadline = time.monotonic() + WORKER_WAIT_S
    workers = count()
    while workers == 0 and time.monotonic() < deadline:
        check_canceled(is_canceled)
        time.sleep(0.5)
        workers = count()
    return workers


def start_cluster(
    workers: Optional[int] = None, scheduler: Optional[str] = None, is_canceled: Optional[CancelCallback] = None
) -> ClusterHandle:
    """Connect to `scheduler`, or start a LocalCluster of `workers` single-threaded worker processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        client = _connect(scheduler, is_canceled)
        try:
            count = _worker_count(client, scheduler, is_canceled)
        except BaseException:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
            raise
        if count == 0:
            client.close(timeout=5)
            raise InputError(
                f"The Dask scheduler at {scheduler} has no workers. Start some with `dask worker {scheduler} "
                "--nthreads 1` in the plugin's environment (README: Big areas)."
            )
        return ClusterHandle(client, None, f"Dask scheduler {scheduler} ({count} workers)", count)
    count = int(workers or default_workers())
    executable = _python_executable()
    if executable:
        import multiprocessing

        multiprocessing.set_executable(executable)
    cluster = LocalCluster(
        n_workers=count,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    return ClusterHandle(client, cluster, f"Dask LocalCluster ({count} worker processes)", count)


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class FootprintWorkerPlugin(WorkerPlugin):
        """Pins a GPU and loads the model once when a worker starts (and again when one restarts)."""

        name = "footprint-model"

        def __init__(self, card_path: str, device: str, workers: int) -> None:
            self.card_path = card_path
            self.device = device
            self.workers = workers

        def setup(self, worker) -> None:
            from .model_cache import cached_model

            pin_device(self.device, worker.name)
            with contextlib.suppress(Exception):  # a failure here resurfaces, with its message, in the first block
                cached_model(self.card_path)

    return FootprintWorkerPlugin


def pin_device(device: str, worker_name: Any) -> Optional[str]:
    """Choose this worker's GPU (cuda:k for worker k of a LocalCluster, else the one it sees)."""
    global PINNED_DEVICE
    if device not in ("auto", "cuda"):
        return None
    with contextlib.suppress(Exception):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count:
            index = int(worker_name) % count if str(worker_name).isdigit() else 0
            torch.cuda.set_device(index)
            PINNED_DEVICE = f"cuda:{index}"
    return PINNED_DEVICE


def register_worker_setup(
    handle: ClusterHandle, card_path: str, device: str, is_canceled: Optional[CancelCallback] = None
) -> None:
    """Install the plugin on every current and future worker of the cluster."""
    plugin = _plugin_class()(card_path, device, handle.workers)
    register = getattr(handle.client, "register_plugin", None) or handle.client.register_worker_plugin
    silent = f"The Dask cluster ({handle.description}) did not take the worker set-up within {REGISTER_TIMEOUT_S:g} s."
    bounded(lambda: register(plugin), REGISTER_TIMEOUT_S, is_canceled, silent)


def worker_pids(client: Any) -> dict[str, int]:
    """{worker address: process id}, for the tests and the benchmark."""
    return client.run(os.getpid)
