"""Time each stage and each pipeline on the 511x659 benchmark preset.

Each measurement runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) belongs to that stage alone; the figure includes the Python
interpreter, numpy/torch and the input frames (about 135 MB for 100 frames of
511x659 float32), which are reported separately as the ``baseline`` row.

Usage::

    python benchmarks/bench_stages.py                 # 100 frames, all stages and pipelines
    python benchmarks/bench_stages.py --frames 200 --stages ncc decon
    python benchmarks/bench_stages.py --device cuda   # on a GPU machine
    python benchmarks/bench_stages.py --threads 1      # one core per stage

Results are printed as a table and written to ``bench_out/stages.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

STAGES = ["baseline", "simulate", "threshold", "ncc", "decon", "track", "render", "mbdt", "mblnet", "mbtnet",
          "baseline1", "baseline2", "cycleulm-ncc", "cycleulm-decon", "cycleulm-loc", "cycleulm-e2e"]


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load(cache: Path, frames: int):
    import numpy as np

    from napari_cycleulm.simulate import PRESETS, simulate

    f = cache / f"bench_{frames}.npz"
    if f.is_file():
        d = np.load(f)
        return d["frames"], dict(zip(d["meta_keys"], d["meta_vals"]))
    kw = dict(PRESETS["benchmark"], n_frames=frames, density=100.0)
    sim = simulate(seed=11, **kw)
    meta = {k: float(sim.metadata[k]) for k in ("psf_sigma_y_px", "psf_sigma_x_px", "pixel_size_um", "frame_rate_hz")}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, frames=sim.frames, meta_keys=list(meta), meta_vals=list(meta.values()))
    return sim.frames, meta


def _worker(stage: str, frames_n: int, device: str | None, cache: str, queue, threads: int | None = None) -> None:
    import torch

    from napari_cycleulm.psf import PSF

    if threads:
        torch.set_num_threads(threads)

    cache = Path(cache)
    t0 = time.perf_counter()
    if stage == "simulate":
        from napari_cycleulm.simulate import PRESETS, simulate

        simulate(seed=11, **dict(PRESETS["benchmark"], n_frames=frames_n, density=100.0))
        queue.put({"stage": stage, "seconds": time.perf_counter() - t0, "frames": frames_n, "peak_rss_mb": _peak_rss_mb()})
        return
    frames, meta = _load(cache, frames_n)
    psf = PSF(sigma_y_px=meta["psf_sigma_y_px"], sigma_x_px=meta["psf_sigma_x_px"])
    kw = {} if device is None else {"device": device}
    t0 = time.perf_counter()
    if stage == "baseline":
        pass
    elif stage == "threshold":
        from napari_cycleulm.preprocess import adaptive_threshold

        for s in range(0, len(frames), 50):
            adaptive_threshold(frames[s : s + 50], **kw)
    elif stage in ("ncc", "decon"):
        from napari_cycleulm.localise import localise

        for s in range(0, len(frames), 50):
            localise(frames[s : s + 50], psf, method=stage, **kw)
    elif stage in ("track", "render"):
        from napari_cycleulm.localise import localise
        from napari_cycleulm.render import SRRenderer
        from napari_cycleulm.track import track

        locs = localise(frames, psf, method="ncc", **kw)
        t0 = time.perf_counter()
        tracks = track(locs)
        if stage == "render":
            t0 = time.perf_counter()
            r = SRRenderer(frames.shape[1:], upsampling=4)
            r.add_tracks(tracks)
            r.add_localisations(locs)
            r.result()
    elif stage == "mbdt":
        from napari_cycleulm.dl.mbdt_inference import translate

        translate(frames, "default", **kw)
    elif stage in ("mblnet", "mbtnet"):
        from napari_cycleulm.dl.mbdt_inference import translate

        mb = translate(frames, "default", **kw)
        t0 = time.perf_counter()
        if stage == "mblnet":
            from napari_cycleulm.localise.mblnet import localise_mblnet

            localise_mblnet(mb, "default", **kw)
        else:
            from napari_cycleulm.render.e2e import E2EAccumulator

            acc = E2EAccumulator(frames.shape[1:], upsampling=4)
            acc.add(mb, "default", **kw)
            acc.result()
    elif stage in ("baseline1", "baseline2") or stage.startswith("cycleulm-"):
        from napari_cycleulm.pipeline import run_pipeline

        run_pipeline(frames, stage, psf, block_size=50, device=device)
    else:
        raise SystemExit(f"unknown stage {stage}")
    seconds = time.perf_counter() - t0
    queue.put({"stage": stage, "seconds": seconds, "frames": int(len(frames)), "peak_rss_mb": _peak_rss_mb()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per stage (default: torch's)")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    cache = Path(args.out)
    # Make the cached benchmark stack once, outside the timed runs.
    _load(cache, args.frames)
    rows = []
    for stage in args.stages:
        q = ctx.Queue()
        p = ctx.Process(target=_worker, args=(stage, args.frames, args.device, str(cache), q, args.threads))
        p.start()
        row = q.get()
        p.join()
        row["fps"] = row["frames"] / row["seconds"] if row["seconds"] > 0 and stage != "baseline" else None
        rows.append(row)
        fps = f"{row['fps']:.2f}" if row["fps"] else "-"
        print(f"{stage:>10}  {row['seconds']:8.2f} s  {fps:>8} frames/s  peak RSS {row['peak_rss_mb']:7.0f} MB", flush=True)
    import platform

    import torch

    from napari_cycleulm.dl.inference import default_precision

    info = {
        "frames": args.frames,
        "shape": [511, 659],
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "torch_threads": args.threads or torch.get_num_threads(),
        "inference_precision": default_precision(args.device or ("cuda" if torch.cuda.is_available() else "cpu")),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    (cache / "stages.json").write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
