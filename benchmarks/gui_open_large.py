"""A 25,000-frame 511 x 659 acquisition opened from disk in napari and run from the workflow dock.

What a user does with a long acquisition, measured end to end in a real
viewer under Xvfb:

1. a ``(25000, 511, 659)`` float32 ``.npy`` stack (33.7 GB) is written to disk
   in chunks (never held in memory): 200 simulated frames (``simulate``)
   repeated with a different flip for every repeat, so the file is as large
   as a real acquisition;
2. napari opens it through the plugin's reader (File > Open), which opens
   files above 2 GB lazily;
3. the *CycleULM workflow* dock is opened as the Plugins menu opens it, the
   stack chosen, Baseline 1 started with the default block size, and stopped
   after ``--run-frames`` frames (the full run would take hours on 2 cores:
   the throughput is reported so that the full time can be extrapolated);
4. peak resident memory (``ru_maxrss``) of that napari process (a fresh one,
   not the one that wrote the file) is reported, with the
   time to open the file, the frames per second of the run and the time of a
   frame step while scrolling the open stack.

Usage::

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/gui_open_large.py --out bench_out/gui_open_large.json
    ... python benchmarks/gui_open_large.py --frames 2000 --run-frames 200   # a quick check

The stack is written to ``--data`` (default: a temporary folder, removed at
the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_stack(path: Path, frames: int, height: int, width: int, seed: int = 0) -> float:
    """Write the long stack chunk by chunk; return the seconds it took."""
    from napari_cycleulm.simulate import simulate

    t0 = time.perf_counter()
    base = simulate(200, height, width, density=60, seed=seed).frames
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(frames, height, width))
    for k, start in enumerate(range(0, frames, len(base))):
        stop = min(frames, start + len(base))
        chunk = base[: stop - start]
        out[start:stop] = chunk[:, :, ::-1] if k % 2 else chunk  # a lateral flip every other repeat
        out.flush()
    del out
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(path: Path, run_frames: int, block_size: int) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cycleulm._napari.widgets.workflow_widget import PLUGIN_NAME

    app = QApplication.instance() or QApplication([])
    rss0 = peak_rss_mb()
    viewer = napari.Viewer(show=True)
    t0 = time.perf_counter()
    layer = viewer.open(str(path), plugin=PLUGIN_NAME)[0]
    app.processEvents()
    open_s = time.perf_counter() - t0
    # Scroll: 20 single-frame steps, each until drawn.
    t0 = time.perf_counter()
    for k in range(20):
        viewer.dims.set_point(0, 1000 + k)
        app.processEvents()
    scroll_ms = (time.perf_counter() - t0) / 20 * 1000
    rss_open = peak_rss_mb()

    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "CycleULM workflow")
    dock.image.value = layer
    dock.pipeline.value = "baseline1"
    dock.block_size.value = block_size
    done = {"frames": 0}
    worker = dock.start()
    if worker is None:
        raise SystemExit(f"the workflow dock refused to start: {dock.last_error}")
    worker.yielded.connect(lambda ev: done.__setitem__("frames", int(getattr(ev, "done", 0))))
    t_start = time.perf_counter()
    t_first = None
    while dock.worker is not None:
        app.processEvents()
        if t_first is None and done["frames"] > 0:
            t_first = time.perf_counter()  # after the automatic PSF and the first block
            f_first = done["frames"]
        if done["frames"] >= run_frames:
            dock.stop()
        time.sleep(0.02)
    t_end = time.perf_counter()
    fps = (done["frames"] - f_first) / (t_end - t_first) if t_first and done["frames"] > f_first else None
    viewer.close()
    return {
        "file": str(path), "shape": list(layer.data.shape), "dtype": str(layer.data.dtype),
        "file_gb": round(path.stat().st_size / 1e9, 2), "layer_data_type": type(layer.data).__name__,
        "open_s": round(open_s, 2), "scroll_ms_per_frame": round(scroll_ms, 1),
        "frames_run": done["frames"], "run_s": round(t_end - t_start, 1),
        "frames_per_s": None if fps is None else round(fps, 2),
        "full_run_hours_extrapolated": None if not fps else round(layer.data.shape[0] / fps / 3600, 2),
        "rss_start_mb": round(rss0, 1), "rss_after_open_mb": round(rss_open, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1), "block_size": block_size,
        "last_error": dock.last_error,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=25000)
    ap.add_argument("--height", type=int, default=511)
    ap.add_argument("--width", type=int, default=659)
    ap.add_argument("--run-frames", type=int, default=600, help="frames of Baseline 1 before Stop")
    ap.add_argument("--block-size", type=int, default=200, help="the workflow dock's block size")
    ap.add_argument("--data", type=Path, default=None, help="folder for the stack (default: temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the stack file")
    ap.add_argument("--out", type=Path, default=Path("bench_out/gui_open_large.json"))
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure is not None:  # the child process: its peak RSS is napari's and the run's alone
        print(json.dumps(measure(args.measure, args.run_frames, args.block_size)), flush=True)
        return 0

    folder = args.data or Path(tempfile.mkdtemp(prefix="cycleulm_large_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ceus_{args.frames}x{args.height}x{args.width}.npy"
    try:
        write_s = None
        if not path.is_file():
            write_s = write_stack(path, args.frames, args.height, args.width)
            print(f"wrote {path} ({path.stat().st_size / 1e9:.1f} GB) in {write_s:.0f} s", flush=True)
        # A fresh process: writing the file maps it into this one, which would count in its RSS.
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(path), "--run-frames", str(args.run_frames),
             "--block-size", str(args.block_size)], capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result["write_s"] = None if write_s is None else round(write_s, 1)
    finally:
        if not args.keep and args.data is None:
            shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result.items():
        print(f"{k:>30}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
