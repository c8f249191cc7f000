"""A 25,000-frame 511 x 659 acquisition on one machine: a zarr store streamed by every pipeline.

Issue 13, "25,000 frames on one machine":

1. a ``(25000, 511, 659)`` float32 acquisition is written to a zarr store
   chunked along time with :func:`napari_cycleulm.io.write_stack`, block by
   block from a lazy stack (never held in memory): 200 simulated frames
   (``simulate``) repeated with one of four flips per repeat (none, lateral,
   axial, both), so the store is as large as a real acquisition;
2. for each pipeline, a fresh process opens the store lazily as
   ``cycleulm run`` does (``read_stack(path, lazy=True)``), exposes only its
   first ``--run-frames`` frames (a :class:`~napari_cycleulm.io.LazyStack`
   over the store's reads) and streams
   :func:`~napari_cycleulm.pipeline.iter_pipeline` over them with the
   defaults of ``cycleulm run``: ``psf="auto"``, ``block_size=200``, the SVD
   clutter filter ``svd:auto`` in blocks of 200 frames, results written to an
   output folder;
3. the child reports its wall time, the time of the first block (PSF
   estimation, network loading, first clutter-filter block), the steady
   frames/s after it, and its peak resident memory (``ru_maxrss``, the whole
   process: Python, torch, the networks and the run).

The full 25,000-frame run is *extrapolated*, not measured: first-block
time + (25,000 - first block) / steady frames/s.  The final stage (linking
tracks, writing maps) is included in the measured seconds of the short run.

``cycleulm run`` has no option to run only the first frames of its input, so
the CLI is not timed here (its path is the same ``read_stack(lazy=True)`` +
``iter_pipeline``).

Usage::

    python benchmarks/long_acquisition.py --out docs/results/long_acquisition.json
    python benchmarks/long_acquisition.py --frames 2000 --run-frames 200   # a quick check

The store is written to ``--data`` (default: a temporary folder, removed at
the end unless ``--keep``; an existing store of the right shape is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PIPELINES = ("baseline1", "baseline2", "cycleulm-loc", "cycleulm-e2e")


def du_bytes(path: Path) -> int:
    """Bytes on disk of a folder (allocated blocks, as ``du`` reports)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def write_store(path: Path, frames: int, height: int, width: int, chunk_frames: int, seed: int = 0) -> float:
    """Write the long acquisition as a zarr store, block by block; return the seconds it took."""
    from napari_cycleulm.io import LazyStack, write_stack
    from napari_cycleulm.simulate import simulate

    t0 = time.perf_counter()
    base = simulate(200, height, width, density=60, seed=seed).frames.astype(np.float32)
    n_base = len(base)
    flips = (lambda b: b, lambda b: b[:, :, ::-1], lambda b: b[:, ::-1, :], lambda b: b[:, ::-1, ::-1])

    def read(a: int, b: int) -> np.ndarray:
        # Frames a:b of the long stack: frame t is base[t % 200] with the flip of its repeat.
        out = np.empty((b - a, height, width), np.float32)
        for i, t in enumerate(range(a, b)):
            out[i] = flips[(t // n_base) % len(flips)](base[t % n_base][None])[0]
        return out

    lazy = LazyStack((frames, height, width), np.float32, read, source="simulated")
    write_stack(path, lazy, chunk_frames=chunk_frames)
    return time.perf_counter() - t0


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0**2  # ru_maxrss is in KiB on Linux


def measure(path: Path, pipeline: str, run_frames: int, block_size: int, out_dir: Path) -> dict:
    """One pipeline over the first ``run_frames`` frames of the store (in this process)."""
    from napari_cycleulm.io import LazyStack, read_stack
    from napari_cycleulm.pipeline import iter_pipeline

    rss_start = peak_rss_gb()
    full = read_stack(path, lazy=True)
    n = min(run_frames, full.shape[0])
    # Only the first n frames, still read chunk by chunk from the store.
    stack = LazyStack((n, *full.shape[1:]), full.dtype, lambda a, b: full[a:b], source=str(path),
                      chunk_frames=full.chunk_frames)
    gen = iter_pipeline(stack, pipeline, "auto", block_size=block_size, out_dir=out_dir)
    t0 = time.perf_counter()
    events = []  # (seconds since start, frames done)
    try:
        while True:
            ev = next(gen)
            events.append((time.perf_counter() - t0, int(ev.done)))
    except StopIteration as stop:
        result = stop.value
    total_s = time.perf_counter() - t0
    # The first block: until the first event that reports frames done.
    first = next(((t, d) for t, d in events if d > 0), None)
    last = max(((t, d) for t, d in events if d > 0), default=None, key=lambda e: (e[1], e[0]))
    steady = None
    if first and last and last[1] > first[1] and last[0] > first[0]:
        steady = (last[1] - first[1]) / (last[0] - first[0])
    rate = steady or n / total_s
    first_s, first_frames = first if first else (0.0, 0)
    extrapolated_s = first_s + (full.shape[0] - first_frames) / rate + (total_s - (last[0] if last else total_s))
    return {
        "pipeline": pipeline,
        "frames_run": int(result.n_frames),
        "seconds": round(total_s, 1),
        "frames_per_s": round(result.n_frames / total_s, 3),
        "first_block_s": round(first_s, 1),
        "first_block_frames": first_frames,
        "steady_frames_per_s": None if steady is None else round(steady, 3),
        "extrapolated_hours_full": round(extrapolated_s / 3600, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "rss_after_imports_gb": round(rss_start, 2),
        "n_localisations": int(result.n_localisations),
        "n_tracks": int(result.n_tracks),
        "timings_s": {k: round(float(v), 1) for k, v in result.timings_s.items()},
        "clutter_filter": result.params.get("clutter_filter"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=25000)
    ap.add_argument("--height", type=int, default=511)
    ap.add_argument("--width", type=int, default=659)
    ap.add_argument("--chunk-frames", type=int, default=10, help="frames per zarr chunk")
    ap.add_argument("--run-frames", type=int, default=400, help="frames each pipeline runs (from the start)")
    ap.add_argument("--run-frames-e2e", type=int, default=None,
                    help="frames for cycleulm-e2e, the slowest (default: --run-frames)")
    ap.add_argument("--block-size", type=int, default=200)
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES))
    ap.add_argument("--data", type=Path, default=None, help="folder for the store (default: temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    ap.add_argument("--out", type=Path, default=Path("bench_out/long_acquisition.json"))
    ap.add_argument("--measure", nargs=3, default=None, help=argparse.SUPPRESS)  # STORE PIPELINE OUT_DIR
    args = ap.parse_args(argv)
    if args.measure is not None:  # the child: its peak RSS is this pipeline's alone
        store, pipeline, out_dir = args.measure
        print(json.dumps(measure(Path(store), pipeline, args.run_frames, args.block_size, Path(out_dir))),
              flush=True)
        return 0

    load = os.getloadavg()
    folder = args.data or Path(tempfile.mkdtemp(prefix="cycleulm_long_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ceus_{args.frames}x{args.height}x{args.width}.zarr"
    report = {
        "machine": {"cpu_cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load],
                    "note": "2 cores shared with other jobs (a benchmark running); children run under nice"},
        "shape": [args.frames, args.height, args.width], "dtype": "float32",
        "store": path.name, "chunk_frames": args.chunk_frames, "block_size": args.block_size,
        "run_frames": args.run_frames, "run_frames_e2e": args.run_frames_e2e or args.run_frames,
        "extrapolation": "full time = first block + (frames - first block) / steady frames/s + final stage",
    }
    try:
        write_s = None
        if not path.is_dir():
            write_s = write_store(path, args.frames, args.height, args.width, args.chunk_frames)
        size = du_bytes(path)
        report.update({"frames_written": args.frames, "write_s": None if write_s is None else round(write_s, 1),
                       "raw_gb": round(args.frames * args.height * args.width * 4 / 1e9, 2),
                       "size_on_disk_gb": round(size / 1e9, 2)})
        print(f"store {path}: {size / 1e9:.1f} GB on disk, written in {write_s} s", flush=True)
        report["pipelines"] = {}
        for name in args.pipelines:
            out_dir = folder / f"out_{name}"
            run_frames = args.run_frames_e2e if name == "cycleulm-e2e" and args.run_frames_e2e else args.run_frames
            # A fresh process per pipeline: peak RSS is a high-water mark and must not carry over.
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(path), name, str(out_dir),
                 "--run-frames", str(run_frames), "--block-size", str(args.block_size)],
                capture_output=True, text=True)
            if child.returncode != 0:
                report["pipelines"][name] = {"error": child.stderr.strip().splitlines()[-5:]}
                print(f"{name}: FAILED\n{child.stderr[-2000:]}", flush=True)
                continue
            res = json.loads(child.stdout.strip().splitlines()[-1])
            report["pipelines"][name] = res
            print(f"{name}: {res['frames_run']} frames in {res['seconds']} s ({res['frames_per_s']} frames/s, "
                  f"steady {res['steady_frames_per_s']}), {res['extrapolated_hours_full']} h for "
                  f"{args.frames}, peak RSS {res['peak_rss_gb']} GB", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")  # partial results survive a stop
        report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if not args.keep and args.data is None:
            shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
