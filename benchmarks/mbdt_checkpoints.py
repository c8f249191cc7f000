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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mbdt_tta import run_selection, selection_parser  # noqa: E402


def _candidate(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT (or NAME=default), got {text!r}")
    return name, path


def main(argv=None) -> int:
    ap = selection_parser(__doc__.split("\n\n")[0], "bench_out/mbdt_checkpoints.json")
    ap.add_argument("--mbdt", nargs="+", type=_candidate, required=True, metavar="NAME=CHECKPOINT",
                    help="candidate MB-DT weights ('default': the shipped ones)")
    args = ap.parse_args(argv)
    candidates = dict(args.mbdt)
    run_selection(args, {tag: {"mbdt": path} for tag, path in candidates.items()}, {"candidates": candidates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
