"""Choose between MB-DT checkpoints on the selection settings, as a user would run them.

CycleULM-Loc with every default (automatic PSF, mirror averaging, spatial
gate, default thresholds) and each candidate MB-DT, against Baseline 2: F1
at 1 px on the eleven *selection* settings of ``benchmarks/mbdt_tta.py``
(seeds 31-41), none of which is a setting or seed of
``benchmarks/generalisation.py``, where the chosen weights are then reported.

Rule (as ``gate_selection.py`` and ``mbdt_tta.py``): the best worst-case
ratio F1(CycleULM-Loc) / F1(Baseline 2) over the settings, the mean ratio
breaking ties.

Usage::

    python benchmarks/mbdt_checkpoints.py --mbdt shipped=default longer=OUT/mbdt_default.pt --out R.json
    python benchmarks/mbdt_checkpoints.py --mbdt ... --settings thr31 thr32 --out A.json   # half the settings
    python benchmarks/mbdt_checkpoints.py --mbdt ... --merge A.json B.json --settings --out R.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mbdt_tta import ALL_SETTINGS, _score, summarise  # noqa: E402

from napari_cycleulm.pipeline import run_pipeline  # noqa: E402
from napari_cycleulm.simulate import simulate  # noqa: E402


def _candidate(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT (or NAME=default), got {text!r}")
    return name, path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mbdt", nargs="+", type=_candidate, required=True, metavar="NAME=CHECKPOINT",
                    help="candidate MB-DT weights ('default': the shipped ones)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/mbdt_checkpoints.json"))
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--settings", nargs="*", default=None, choices=list(ALL_SETTINGS),
                    help="settings to run (default: all eleven; none with --merge: only merge)")
    ap.add_argument("--merge", nargs="*", type=Path, default=[],
                    help="JSON reports of other runs (e.g. over other --settings) to merge before choosing")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    candidates = dict(args.mbdt)
    rows = {}
    for other in args.merge:
        rows.update(json.loads(other.read_text())["results"])
    for name in list(ALL_SETTINGS) if args.settings is None else args.settings:
        sim = simulate(args.frames, 128, 160, **ALL_SETTINGS[name])
        t0 = time.perf_counter()
        kw = dict(pixel_size_um=50.0, frame_rate_hz=500.0)
        row = {"baseline2": _score(sim, run_pipeline(sim.frames, "baseline2", "auto", **kw))}
        for tag, path in candidates.items():
            row[tag] = _score(sim, run_pipeline(sim.frames, "cycleulm-loc", "auto", mbdt=path, **kw))
        rows[name] = row
        print(name, {k: round(v["f1"], 3) for k, v in row.items()}, f"{time.perf_counter() - t0:.0f} s", flush=True)
    report = {"frames": args.frames, "candidates": candidates,
              "settings": {k: ALL_SETTINGS[k] for k in rows}, "results": rows,
              **summarise(rows, list(candidates))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    for tag, s in report["modes"].items():
        print(f"{tag:>14}: worst ratio {s['worst_ratio']:.3f}, mean ratio {s['mean_ratio']:.3f}, "
              f"mean F1 {s['mean_f1']:.3f}")
    print("chosen:", report["chosen"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
