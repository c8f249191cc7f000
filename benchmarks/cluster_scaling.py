"""One process against a dask LocalCluster of 1 and 2 workers, on the same frames.

Simulates an acquisition (``--frames`` frames of the sample preset's size, seed
``--seed``), writes it to a ``.npy`` file that every worker opens itself, and
runs one pipeline three times: in this process (torch on all cores), on a
``LocalCluster`` of 1 worker and of 2 workers (one thread each, as
``cycleulm run --dask-workers N`` starts them).  Wall time includes starting
the cluster (also reported apart, ``cluster_start_s``) and loading the
networks on the workers (inside ``run_s``).  The tables and maps of
the cluster runs are compared with those of a single-process run with torch
on one thread, the workers' setting (network outputs depend on the number of
threads in their last bits); the baselines use no network.

    python benchmarks/cluster_scaling.py --pipeline baseline1 --frames 2000 \
        --out docs/results/cluster_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _same(a, b) -> dict:
    out = {}
    for t in ("localisations", "tracks"):
        ta, tb = getattr(a, t), getattr(b, t)
        out[t] = bool(len(ta) == len(tb) and all(np.array_equal(np.asarray(ta[c]), np.asarray(tb[c]))
                                               for c in ta.columns))
    out["maps"] = bool(all(np.array_equal(getattr(a.maps, m), getattr(b.maps, m), equal_nan=True)
                           for m in ("density", "count", "velocity", "axial_velocity", "direction")))
    out["power_doppler"] = bool(np.array_equal(a.power_doppler, b.power_doppler))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="baseline1")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--block-size", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from napari_cycleulm.io import read_stack
    from napari_cycleulm.pipeline import run_pipeline
    from napari_cycleulm.pipeline.distributed import close_client, make_client
    from napari_cycleulm.simulate import PRESETS, simulate

    preset = dict(PRESETS["sample"], n_frames=args.frames)
    sim = simulate(seed=args.seed, **preset)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acquisition.npy"
        np.save(path, sim.frames)
        del sim
        kw = dict(block_size=args.block_size, keep_tables=True)

        t0 = time.perf_counter()
        single = run_pipeline(read_stack(path, lazy=True), args.pipeline, "auto", **kw)
        t_single = time.perf_counter() - t0
        rows.append({"run": f"one process ({torch.get_num_threads()} torch threads)",
                     "wall_s": round(t_single, 1), "frames_per_s": round(args.frames / t_single, 2)})
        print(rows[-1], flush=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        reference = run_pipeline(read_stack(path, lazy=True), args.pipeline, "auto", **kw)
        torch.set_num_threads(threads)
        for n in args.workers:
            t0 = time.perf_counter()
            client = make_client(workers=n)
            t_start = time.perf_counter() - t0
            try:
                t1 = time.perf_counter()
                res = run_pipeline(read_stack(path, lazy=True), args.pipeline, "auto", client=client, **kw)
                t_run = time.perf_counter() - t1
            finally:
                close_client(client)
            wall = time.perf_counter() - t0
            rows.append({"run": f"LocalCluster, {n} worker(s) x 1 thread", "wall_s": round(wall, 1),
                         "cluster_start_s": round(t_start, 1), "run_s": round(t_run, 1),
                         "frames_per_s": round(args.frames / wall, 2),
                         "frames_per_s_without_start": round(args.frames / t_run, 2),
                         "identical_to_one_thread_run": _same(reference, res)})
            print(rows[-1], flush=True)
        rows.append({"run": "single process vs its 1-thread rerun", "identical": _same(reference, single)})
    report = {"pipeline": args.pipeline, "frames": args.frames, "frame_shape": [preset["height"], preset["width"]],
              "seed": args.seed, "block_size": args.block_size, "cpu_count": os.cpu_count(),
              "load_average_at_end": os.getloadavg(), "rows": rows}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
