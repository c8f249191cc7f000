"""How napari copes with a long acquisition: 25,000 frames x 50 bubbles = 1.25M localisations.

Compares what the widgets did before (``points_kwargs`` / ``tracks_kwargs`` +
``add_result``: every row in one layer, "naive") with
``_napari.widgets._display.show_localisations`` (windowed Points) and ``show_tracks``
(thinned Tracks), on a synthetic table: 50 bubbles in every frame, each
moving on a straight line at 0.5-3 px/frame for 6-14 frames (a track), in a
512 x 512 field, with ``intensity`` / ``score`` / ``vy`` / ``vx`` columns.  A
(25000, 512, 512) reference Image layer (a broadcast zero array, so it costs
no memory) stands for the CEUS stack.

Each case runs in a fresh process (peak RSS is that case's own) and measures:

- ``create_s``: making the layer(s) until the first draw has happened;
- ``scroll_ms``: mean (and max) time per frame step over ``--steps`` steps of
  +1 frame from frame 12,000 (``viewer.dims.current_step = ...`` then Qt events
  processed until the canvas has drawn);
- ``jump_ms``: the same for 20 random frames (each one reloads a window);
- ``pan_ms``: mean time per ``viewer.camera.center`` change (20 moves);
- ``rss_mb``: peak resident memory of the process, and ``rss_start_mb`` before
  the layers were made (interpreter + napari + Qt + the synthetic table).

Naive cases are capped: at most ``--naive-budget-s`` seconds of stepping (the
number of steps done is reported) and ``--timeout-s`` per process.

Usage (the machine has no GPU for OpenGL: Xvfb renders with Mesa llvmpipe)::

    OMP_NUM_THREADS=1 xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/gui_large.py
    ... python benchmarks/gui_large.py --cases points tracks --frames 5000

The numbers in docs/guide/large_data.md came from two runs (display cases
repeated 3 times, naive cases once)::

    ... python benchmarks/gui_large.py --cases image points tracks-25k tracks tracks-100k both \
            --repeat 3 --out bench_out/gui_large_display.json
    ... python benchmarks/gui_large.py --cases naive-points-100k naive-points-250k naive-points \
            naive-tracks-250k naive-tracks naive-both --out bench_out/gui_large_naive.json

Prints a table and writes ``bench_out/gui_large.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# name -> (what is shown, how, size in frames (None = --frames), keyword arguments)
CASES = {
    "image": ("reference image only", "none", None, {}),
    "naive-points-100k": ("localisations", "naive", 2000, {}),
    "naive-points-250k": ("localisations", "naive", 5000, {}),
    "naive-points": ("localisations", "naive", None, {}),
    "points": ("localisations", "display", None, {}),
    "naive-tracks-250k": ("tracks", "naive", 5000, {}),
    "naive-tracks": ("tracks", "naive", None, {}),
    "tracks-25k": ("tracks", "display", None, {"max_vertices": 25_000}),
    "tracks": ("tracks", "display", None, {}),
    "tracks-100k": ("tracks", "display", None, {"max_vertices": 100_000}),
    "naive-both": ("both", "naive", None, {}),
    "both": ("both", "display", None, {}),
}
DEFAULT_CASES = list(CASES)


def synthetic_tables(n_frames: int, n_bubbles: int = 50, field: int = 512, seed: int = 0):
    """Localisations and Tracks of ``n_bubbles`` bubbles in every one of ``n_frames`` frames.

    Each of ``n_bubbles`` slots holds successive tracks of 6-14 frames moving on
    straight lines (0.5-3 px/frame, random direction, 0.1 px jitter); rows are
    sorted by frame, as the pipeline writes them.
    """
    from napari_cycleulm.io.tables import Localisations, Tracks

    rng = np.random.default_rng(seed)
    tids, frames, next_id = [], [], 0
    for _ in range(n_bubbles):
        lengths = rng.integers(6, 15, size=n_frames // 6 + 2)
        lengths[0] = rng.integers(1, 15)  # stagger the slots
        ends = np.cumsum(lengths)
        k = int(np.searchsorted(ends, n_frames)) + 1
        lengths = lengths[:k]
        lengths[-1] -= ends[k - 1] - n_frames
        tids.append(np.repeat(np.arange(next_id, next_id + k), lengths))
        frames.append(np.arange(n_frames))
        next_id += k
    tid, frame = np.concatenate(tids), np.concatenate(frames)
    start = rng.uniform(0, field - 1, (next_id, 2))
    angle = rng.uniform(0, 2 * np.pi, next_id)
    speed = rng.uniform(0.5, 3.0, next_id)
    vel = np.stack([speed * np.sin(angle), speed * np.cos(angle)], axis=1)
    t0 = np.full(next_id, n_frames)
    np.minimum.at(t0, tid, frame)
    pos = start[tid] + vel[tid] * (frame - t0[tid])[:, None] + rng.normal(0, 0.1, (len(frame), 2))
    pos = np.clip(pos, 0, field - 1)
    order = np.lexsort((tid, frame))
    tid, frame, pos = tid[order], frame[order], pos[order]
    locs = Localisations({"frame": frame, "y": pos[:, 0], "x": pos[:, 1],
                          "intensity": rng.uniform(0.2, 1.0, len(frame)),
                          "score": rng.uniform(0.5, 1.0, len(frame))})
    tracks = Tracks({"track_id": tid, "frame": frame, "y": pos[:, 0], "x": pos[:, 1],
                     "vy": vel[tid, 0], "vx": vel[tid, 1]})
    return locs, tracks


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def run_case(name: str, n_frames: int, steps: int, naive_budget_s: float) -> dict:
    """Measure one case in this process (needs a display)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cycleulm._napari.widgets._display import show_localisations, show_tracks
    from napari_cycleulm._napari.widgets._layers import add_result, points_kwargs, tracks_kwargs

    what, how, size, kwargs = CASES[name]
    n_frames = size or n_frames
    locs, tracks = synthetic_tables(n_frames)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    draws = [0]
    canvas.events.draw.connect(lambda event: draws.__setitem__(0, draws[0] + 1))

    def settle(timeout_s: float = 30.0) -> None:
        """Process Qt events until the canvas has drawn at least once more."""
        before = draws[0]
        t_end = time.perf_counter() + timeout_s
        app.processEvents()
        while draws[0] == before and time.perf_counter() < t_end:
            app.processEvents()

    ref = viewer.add_image(np.broadcast_to(np.zeros((1, 512, 512), np.float32), (n_frames, 512, 512)),
                           name="CEUS", contrast_limits=(0, 1))
    viewer.dims.current_step = (n_frames // 2, 0, 0)
    settle()
    rss_start = _rss_mb()
    geo = dict(scale=ref.scale, translate=ref.translate)

    t0 = time.perf_counter()
    layers = []
    if what in ("localisations", "both"):
        if how == "naive":
            data, kw = points_kwargs(locs, "CEUS localisations", **geo)
            layers.append(add_result(viewer, "points", data, kw.pop("name"), **kw))
        else:
            layers.append(show_localisations(viewer, locs, "CEUS localisations", reference=ref, **kwargs))
    if what in ("tracks", "both"):
        if how == "naive":
            data, kw = tracks_kwargs(tracks, "CEUS tracks", **geo)
            layers.append(add_result(viewer, "tracks", data, kw.pop("name"), **kw))
        else:
            layers.append(show_tracks(viewer, tracks, "CEUS tracks", reference=ref, **kwargs))
    settle()
    create_s = time.perf_counter() - t0

    budget = naive_budget_s if how == "naive" else float("inf")

    def timed_steps(frames) -> list[float]:
        out, t_start = [], time.perf_counter()
        for f in frames:
            t = time.perf_counter()
            viewer.dims.current_step = (int(f), 0, 0)
            settle()
            out.append(time.perf_counter() - t)
            if time.perf_counter() - t_start > budget:
                break
        return out

    first = min(12_000, n_frames // 2)
    draws_before = draws[0]
    scroll = timed_steps(range(first + 1, first + 1 + steps))
    draws_per_step = (draws[0] - draws_before) / max(1, len(scroll))
    jump = timed_steps(np.random.default_rng(1).integers(0, n_frames, 20))
    centre = np.asarray(viewer.camera.center, float)
    pan = []
    for k in range(20):
        t = time.perf_counter()
        viewer.camera.center = tuple(centre + np.r_[np.zeros(len(centre) - 2), 5.0 * (k + 1), 3.0 * (k + 1)])
        settle()
        pan.append(time.perf_counter() - t)
        if how == "naive" and sum(pan) > budget:
            break
    shown = {layer.name: int(len(layer.data)) for layer in layers}
    info = {layer.name: layer.metadata.get("cycleulm_display") for layer in layers}
    result = {
        "case": name, "shows": what, "how": how, "rows": int(len(locs)), "frames": n_frames,
        "kwargs": kwargs, "create_s": create_s,
        "scroll_ms": 1e3 * float(np.mean(scroll)), "scroll_max_ms": 1e3 * float(np.max(scroll)),
        "scroll_steps": len(scroll), "draws_per_step": draws_per_step,
        "jump_ms": 1e3 * float(np.mean(jump)), "jump_max_ms": 1e3 * float(np.max(jump)), "jump_steps": len(jump),
        "pan_ms": 1e3 * float(np.mean(pan)), "pan_steps": len(pan),
        "rss_start_mb": rss_start, "rss_mb": _rss_mb(), "layer_rows": shown, "display": info,
        "load_avg_1min": os.getloadavg()[0],
    }
    viewer.close()
    return result


def _table(results: list[dict]) -> str:
    head = (f"{'case':<18} {'rows':>9} {'in layer':>9} {'create s':>9} {'scroll ms':>10} {'(max)':>7} "
            f"{'jump ms':>8} {'(max)':>7} {'pan ms':>7} {'RSS MB':>7} {'(start)':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['case']:<18} {r['error']}")
            continue
        scroll = f"{r['scroll_ms']:.1f}" + ("*" if r["scroll_steps"] < r.get("steps_asked", r["scroll_steps"]) else "")
        lines.append(
            f"{r['case']:<18} {r['rows']:>9,} {sum(r['layer_rows'].values()):>9,} {r['create_s']:>9.2f} "
            f"{scroll:>10} {r['scroll_max_ms']:>7.0f} {r['jump_ms']:>8.1f} {r['jump_max_ms']:>7.0f} "
            f"{r['pan_ms']:>7.1f} {r['rss_mb']:>7.0f} {r['rss_start_mb']:>7.0f}")
    return "\n".join(lines)


def _run_child(cmd: list[str], case: str, timeout_s: float, env: dict) -> dict:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"case": case, "error": f"did not finish within {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"case": case, "error": f"failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    ap.add_argument("--frames", type=int, default=25_000, help="frames of 50 bubbles (default 25000)")
    ap.add_argument("--steps", type=int, default=50, help="+1 frame steps when scrolling (default 50)")
    ap.add_argument("--naive-budget-s", type=float, default=60.0,
                    help="stop stepping/panning a naive case after this many seconds (default 60)")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="per-case process limit (default 300)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each non-naive case this many times and keep the run with the median "
                         "scroll time (the machine is shared; default 1)")
    ap.add_argument("--out", default="bench_out/gui_large.json")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        res = run_case(args._child, args.frames, args.steps, args.naive_budget_s)
        print("RESULT " + json.dumps(res))
        return 0

    results = []
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for case in args.cases:
        cmd = [sys.executable, __file__, "--_child", case, "--frames", str(args.frames),
               "--steps", str(args.steps), "--naive-budget-s", str(args.naive_budget_s)]
        runs = []
        for _ in range(1 if CASES[case][1] == "naive" else max(1, args.repeat)):
            runs.append(_run_child(cmd, case, args.timeout_s, env))
            runs[-1]["steps_asked"] = args.steps
        ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["scroll_ms"])
        res = ok[len(ok) // 2] if ok else runs[-1]
        res["runs_scroll_ms"] = [r.get("scroll_ms") for r in runs]
        results.append(res)
        print(_table([res]).splitlines()[-1], flush=True)
    print()
    print(_table(results))
    print("* fewer steps than asked: the naive time budget ran out.")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"frames": args.frames, "steps": args.steps, "repeat": args.repeat,
                               "command": " ".join(sys.argv), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
