"""Fingerprint every pipeline's tables and maps, to check that a refactoring changed no result.

Runs each pipeline on the bundled sample (``simulate(seed=0, **PRESETS["sample"])``)
and on the same preset with other seeds, and saves the localisation tables,
track tables, SR maps and power Doppler in one ``.npz``.  Run it on two
commits and compare::

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src python benchmarks/pipeline_fingerprint.py --out /tmp/before.npz
    python benchmarks/pipeline_fingerprint.py --out /tmp/after.npz --compare /tmp/before.npz

``--compare`` prints, per pipeline and seed, whether tables and maps are
identical, else the largest difference; the exit status is 1 when any
table differs.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from napari_cycleulm.pipeline import PIPELINES, run_pipeline
from napari_cycleulm.simulate import PRESETS, simulate

MAPS = ("density", "count", "velocity", "direction")


def fingerprint(seeds, pipelines, frames: int | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for seed in seeds:
        preset = dict(PRESETS["sample"])
        if frames:
            preset["n_frames"] = frames
        sim = simulate(seed=seed, **preset)
        for name in pipelines:
            t0 = time.perf_counter()
            res = run_pipeline(sim.frames, name, "auto", block_size=64)
            key = f"{name}/{seed}"
            for table, cols in (("loc", ("frame", "y", "x", "score")), ("trk", ("track_id", "frame", "y", "x"))):
                t = res.localisations if table == "loc" else res.tracks
                for c in cols:
                    if t is not None and c in t:
                        out[f"{key}/{table}/{c}"] = np.asarray(t[c])
            for m in MAPS:
                out[f"{key}/map/{m}"] = np.asarray(getattr(res.maps, m))
            out[f"{key}/map/power_doppler"] = res.power_doppler
            print(f"{key}: {res.n_localisations} localisations, {res.n_tracks} tracks, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    return out


def compare(new: dict, old: dict) -> int:
    bad = 0
    runs = sorted({"/".join(k.split("/")[:2]) for k in old})
    for run in runs:
        worst_table, worst_map = 0.0, 0.0
        same_tables = True
        for k in sorted(k for k in old if k.startswith(run + "/")):
            a, b = old[k], new.get(k)
            if b is None or a.shape != b.shape:
                same_tables = same_tables and "/map/" in k
                worst = np.inf
            else:
                both_nan = np.isnan(a) & np.isnan(b) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
                diff = np.where(both_nan, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
                worst = float(np.nanmax(diff)) if diff.size else 0.0
                if np.isnan(diff).any():
                    worst = np.inf
            if "/map/" in k:
                worst_map = max(worst_map, worst)
            else:
                worst_table = max(worst_table, worst)
                same_tables = same_tables and worst == 0.0
        bad += not same_tables
        print(f"{run:28s} tables {'identical' if worst_table == 0 else f'differ (max {worst_table:.3g})'}; "
              f"maps {'identical' if worst_map == 0 else f'max abs difference {worst_map:.3g}'}")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 101, 202])
    ap.add_argument("--pipelines", nargs="+", default=sorted(PIPELINES))
    ap.add_argument("--frames", type=int, default=None, help="frames per run (default: the sample's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", default=None, help="a fingerprint .npz to compare with")
    args = ap.parse_args(argv)
    fp = fingerprint(args.seeds, args.pipelines, args.frames)
    np.savez_compressed(args.out, **fp)
    if args.compare:
        old = dict(np.load(args.compare))
        return compare(fp, old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
