"""Peak memory of a streamed pipeline run as the acquisition grows.

Writes TIFF stacks of increasing length (the simulated sample repeated, so the
bubble density is constant), runs ``cycleulm run`` on each in a fresh process
with ``--out`` (tables streamed to disk), and reports the peak resident memory
of that process.  With streaming, peak memory depends on ``--block-size`` and
not on the number of frames.

Usage::

    python benchmarks/bench_memory.py --frames 500 2000 8000 --pipeline baseline1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[500, 2000, 8000])
    ap.add_argument("--pipeline", default="baseline1")
    ap.add_argument("--block-size", type=int, default=200)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)

    import tifffile

    from napari_cycleulm.simulate import simulate

    sim = simulate(seed=5)  # 200 frames of 128 x 160
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "metadata.json").write_text(json.dumps({"pixel_size_um": 50.0, "frame_rate_hz": 500.0}))
        for n in args.frames:
            path = tmp / f"stack_{n}.tif"
            with tifffile.TiffWriter(path, bigtiff=True) as tw:
                for i in range(n):
                    tw.write(sim.frames[i % len(sim.frames)], contiguous=True, photometric="minisblack")
            cmd = [sys.executable, "-c",
                   "import resource, sys; from napari_cycleulm.cli import main; rc = main(sys.argv[1:]); "
                   "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)",
                   "run", str(path), "--pipeline", args.pipeline, "--out", str(tmp / f"out_{n}"),
                   "--block-size", str(args.block_size), "--quiet"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr)
                return proc.returncode
            peak = float(proc.stdout.split("PEAK_RSS_MB")[-1].strip().split()[0])
            stack_mb = n * sim.frames[0].nbytes / 2**20
            rows.append({"frames": n, "stack_mb": round(stack_mb, 1), "peak_rss_mb": round(peak, 1),
                         "seconds": round(seconds, 1)})
            print(f"{n:>7} frames ({stack_mb:7.1f} MB on disk): peak RSS {peak:7.1f} MB, {seconds:6.1f} s", flush=True)
            path.unlink()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps({"pipeline": args.pipeline, "block_size": args.block_size,
                                                 "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
