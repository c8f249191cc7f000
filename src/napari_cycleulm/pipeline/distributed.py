"""Blocks of a pipeline on a dask cluster (dask.distributed).

The run's :class:`~napari_cycleulm.pipeline.blocks.RunPlan` is sent once to
every worker (``Client.scatter(..., broadcast=True)``).  Each worker opens the
input file itself the first time it needs it (so the data must be readable
at the same path from every worker: a shared file system, or an in-memory
array small enough to send), loads the networks once from their checkpoint
paths, and processes whole blocks with
:func:`~napari_cycleulm.pipeline.blocks.process_block`, which reads the
neighbouring frames it needs itself.  The results come back here and are
handed to the runner in frame order, where tracks are linked in one pass and
the maps merged: the result is the one of a run in a single process.

A worker that dies takes its blocks with it; the scheduler recomputes them on
another worker (blocks are pure functions of the plan).  Nothing is written
until every block is back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from ..errors import CycleULMError
from .blocks import BlockResult, RunPlan, process_block

#: Blocks submitted ahead of the one the runner waits for, per worker (bounds the results held here).
AHEAD_PER_WORKER = 4


def _block_task(plan: RunPlan, start: int, stop: int) -> BlockResult:
    return process_block(plan, start, stop)


def iter_block_results(client, plan: RunPlan) -> Iterator[BlockResult]:
    """Process the plan's blocks on the cluster of ``client``; yield the results in frame order.

    At most ``AHEAD_PER_WORKER`` blocks per worker are in flight or waiting
    here, so memory on this side stays bounded on long acquisitions.
    Closing the generator (a cancelled run) cancels the blocks not yet done.

    Raises
    ------
    CycleULMError
        When the plan cannot be sent (an input that is neither a file nor an
        array) or a block fails on a worker (the worker's error is quoted).
    """
    if plan.reopen is None and plan.source_array is None:
        raise CycleULMError(
            "this input cannot be sent to dask workers: run the pipeline on a file "
            "(cycleulm run FILE) or on a NumPy, zarr or dask array."
        )
    plan_future = client.scatter(plan, broadcast=True, hash=False)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    ahead = AHEAD_PER_WORKER * n_workers
    blocks = plan.blocks()
    run = uuid.uuid4().hex[:8]
    futures = {}
    nxt = 0

    def submit_until(limit: int) -> None:
        nonlocal nxt
        while nxt < min(limit, len(blocks)):
            a, b = blocks[nxt]
            futures[nxt] = client.submit(_block_task, plan_future, a, b, key=f"cycleulm-block-{run}-{a}",
                                         retries=1)
            nxt += 1

    try:
        for i in range(len(blocks)):
            submit_until(i + ahead)
            try:
                result = futures.pop(i).result()
            except CycleULMError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a worker raised, said in one line
                raise CycleULMError(
                    f"block {blocks[i][0]}-{blocks[i][1] - 1} failed on a dask worker "
                    f"({type(exc).__name__}: {exc})."
                ) from None
            yield result
    finally:
        if futures:
            client.cancel(list(futures.values()))
        client.cancel([plan_future])


def make_client(scheduler: str | None = None, workers: int | None = None):
    """A dask client: connected to ``scheduler`` (``tcp://host:8786``) or a new ``LocalCluster``.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``dask scheduler`` on a head node).
    workers : int, optional
        Start a local cluster of this many worker processes (one thread each;
        torch uses the worker's share of the cores).

    Returns
    -------
    distributed.Client
        Close it (and its cluster) with ``client.close()``; a local cluster
        made here is closed with it.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - distributed is a dependency
        raise CycleULMError("dask.distributed is not installed: pip install distributed") from None
    if (scheduler is None) == (workers is None):
        raise CycleULMError("give either a scheduler address or a number of local workers, not both.")
    if scheduler is not None:
        try:
            return Client(scheduler, timeout="20s")
        except OSError as exc:
            raise CycleULMError(
                f"could not reach the dask scheduler at {scheduler} ({exc}); start one with "
                "`dask scheduler` and check the address and port."
            ) from None
    if int(workers) != workers or workers < 1:
        raise CycleULMError(f"the number of dask workers must be a whole number >= 1, got {workers}.")
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    client._cycleulm_owns_cluster = cluster  # closed by close_client
    return client


def close_client(client) -> None:
    """Close a client from :func:`make_client` (and the local cluster it started)."""
    cluster = getattr(client, "_cycleulm_owns_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


__all__ = ["AHEAD_PER_WORKER", "close_client", "iter_block_results", "make_client"]
