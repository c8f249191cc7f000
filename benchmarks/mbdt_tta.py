"""Choose MB-DT's mirror averaging (test-time augmentation) on the selection settings.

MB-DT redraws speckle of clutter and noise as bubbles, and not in a mirror
symmetric way; averaging its translations of the frames and of their mirror
images (:data:`napari_cycleulm.dl.mbdt_inference.TTA_MODES`) lowers the weight
of those false bubbles.  This script measures CycleULM-Loc with each mode
against Baseline 2 (F1 at 1 px, default thresholds, automatic PSF) on the
eleven *selection* settings (seeds 31-41: the six of
``benchmarks/gate_selection.py`` and the five of
``benchmarks/mbdt_input_scale.py``); none is a setting or seed of
``benchmarks/generalisation.py``, where the chosen default is then reported.

Rule (as ``gate_selection.py``): the best worst-case ratio
F1(CycleULM-Loc) / F1(Baseline 2) over the settings, the mean ratio breaking
ties.

Usage::

    python benchmarks/mbdt_tta.py --out docs/results/mbdt_tta.json [--settings thr31 ...]
    python benchmarks/mbdt_tta.py --out docs/results/mbdt_tta.json --merge A.json B.json --settings
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_selection import SETTINGS  # noqa: E402
from mbdt_input_scale import MORE_SELECTION  # noqa: E402

from napari_cycleulm.dl.mbdt_inference import DEFAULT_TTA, TTA_MODES  # noqa: E402
from napari_cycleulm.evaluate.metrics import match_localisations  # noqa: E402
from napari_cycleulm.pipeline import run_pipeline  # noqa: E402
from napari_cycleulm.simulate import simulate  # noqa: E402

ALL_SETTINGS = {**SETTINGS, **MORE_SELECTION}


def _score(sim, result) -> dict:
    m = match_localisations(sim.ground_truth, result.localisations, tolerance=1.0)
    return {"f1": m.f1, "recall": m.recall, "precision": m.precision}


def summarise(rows: dict, variants=TTA_MODES) -> dict:
    """Worst and mean ratio to Baseline 2 per variant, and the variant the rule chooses.

    ``rows[setting][variant]["f1"]``, with ``rows[setting]["baseline2"]`` the reference.
    """
    summary = {}
    for v in variants:
        ratios = [r[v]["f1"] / max(r["baseline2"]["f1"], 1e-9) for r in rows.values() if v in r]
        summary[v] = {"worst_ratio": float(min(ratios)), "mean_ratio": float(np.mean(ratios)),
                      "mean_f1": float(np.mean([r[v]["f1"] for r in rows.values()]))}
    chosen = max(summary, key=lambda v: (summary[v]["worst_ratio"], summary[v]["mean_ratio"]))
    return {"modes": summary, "chosen": chosen}


def selection_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """The options every selection script of this kind shares."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=Path(default_out))
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--settings", nargs="*", default=None, choices=list(ALL_SETTINGS),
                    help="settings to run (default: all eleven; none with --merge: only merge)")
    ap.add_argument("--merge", nargs="*", type=Path, default=[],
                    help="JSON reports of other runs (e.g. over other --settings) to merge before choosing")
    ap.add_argument("--threads", type=int, default=1)
    return ap


def run_selection(args, variants: dict, extra: dict) -> dict:
    """Baseline 2 and CycleULM-Loc with each variant's ``run_pipeline`` arguments on the settings.

    Writes ``args.out`` and prints the summary; returns the report.
    """
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    rows = {}
    for other in args.merge:
        rows.update(json.loads(other.read_text())["results"])
    for name in list(ALL_SETTINGS) if args.settings is None else args.settings:
        sim = simulate(args.frames, 128, 160, **ALL_SETTINGS[name])
        t0 = time.perf_counter()
        kw = dict(pixel_size_um=50.0, frame_rate_hz=500.0)
        row = {"baseline2": _score(sim, run_pipeline(sim.frames, "baseline2", "auto", **kw))}
        for tag, extra_kw in variants.items():
            row[tag] = _score(sim, run_pipeline(sim.frames, "cycleulm-loc", "auto", **extra_kw, **kw))
        rows[name] = row
        print(name, {k: round(v["f1"], 3) for k, v in row.items()}, f"{time.perf_counter() - t0:.0f} s", flush=True)
    report = {"frames": args.frames, "settings": {k: ALL_SETTINGS[k] for k in rows}, "results": rows,
              **summarise(rows, list(variants)), **extra}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    for tag, s in report["modes"].items():
        print(f"{tag:>14}: worst ratio {s['worst_ratio']:.3f}, mean ratio {s['mean_ratio']:.3f}, "
              f"mean F1 {s['mean_f1']:.3f}")
    print("chosen:", report["chosen"])
    return report


def main(argv=None) -> int:
    args = selection_parser(__doc__.split("\n\n")[0], "bench_out/mbdt_tta.json").parse_args(argv)
    run_selection(args, {mode: {"denoise_params": {"tta": mode}} for mode in TTA_MODES},
                  {"shipped_default": DEFAULT_TTA})
    return 0


if __name__ == "__main__":
    sys.exit(main())
