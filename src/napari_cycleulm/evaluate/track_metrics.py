"""Track-level scores against ground-truth tracks (links, false links, lengths).

A *link* is a pair of consecutive rows of one track (by frame; interpolated
rows are skipped).  Output points are first matched to ground-truth points of
the same frame (:func:`~napari_cycleulm.evaluate.metrics.match_localisations`, within
``tolerance`` pixels), which gives each output point the ground-truth
``track_id`` of its match, or none.  Then

* a **true link** of the ground truth is a pair of consecutive points of one
  true track (frames ``f`` and the next frame in which that track is
  present, normally ``f + 1``); it is **recovered** when both of its points
  were matched and the two matched output points are consecutive points of
  one output track;
* an output link is **correct** when both ends are matched to the same true
  track, and **false** otherwise: ends on two different true tracks (a
  *switch*) or an end matched to no true point (a link through a false or
  badly placed detection).

``true_link_fraction = recovered / true links``;
``true_link_fraction_detected`` divides by the true links whose two points
were both matched (what a linker could recover from these detections);
``false_link_fraction = false / output links``.  Track lengths are numbers
of (non-interpolated) points per track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import CycleULMError
from .metrics import match_localisations
from ..io.tables import PointTable

__all__ = ["LENGTH_BINS", "TrackScore", "length_summary", "score_tracks"]

#: Lower edges of the track-length histogram bins (points per track); the last is open.
LENGTH_BINS = (1, 2, 4, 8, 16, 32, 64, 128)


def length_summary(lengths) -> dict:
    """Distribution of track lengths (points per track).

    Parameters
    ----------
    lengths : array_like of int
        Points per track.

    Returns
    -------
    dict
        ``n_tracks``, ``mean``, ``median``, ``p10``, ``p90``, ``max`` and
        ``histogram``: counts per bin ``[LENGTH_BINS[i], LENGTH_BINS[i+1])``,
        keyed ``"1-1"``, ``"2-3"``, ..., ``"128+"``; NaN statistics (``None``
        in JSON) without tracks.
    """
    n = np.asarray(lengths, dtype=np.int64).reshape(-1)
    edges = list(LENGTH_BINS) + [np.iinfo(np.int64).max]
    hist = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = f"{lo}+" if hi == edges[-1] else f"{lo}-{hi - 1}"
        hist[key] = int(((n >= lo) & (n < hi)).sum())
    stat = (lambda f: float(f(n))) if n.size else (lambda f: math.nan)
    return {
        "n_tracks": int(n.size),
        "mean": stat(np.mean),
        "median": stat(np.median),
        "p10": stat(lambda a: np.percentile(a, 10)),
        "p90": stat(lambda a: np.percentile(a, 90)),
        "max": int(n.max()) if n.size else 0,
        "histogram": hist,
    }


@dataclass
class TrackScore:
    """Track-level comparison of output tracks with true tracks (see the module notes).

    Attributes
    ----------
    n_true_links, n_true_links_detected, n_recovered : int
        True links; those whose two points were matched; those recovered.
    n_links, n_correct, n_switch, n_unmatched : int
        Output links; correct ones; false ones between two true tracks; false
        ones with an end matched to no true point.
    true_link_fraction, true_link_fraction_detected, false_link_fraction : float
        ``n_recovered / n_true_links``, ``n_recovered / n_true_links_detected``,
        ``(n_switch + n_unmatched) / n_links``; NaN when the denominator is 0.
    lengths, true_lengths : numpy.ndarray of int
        Points per output track and per true track.
    tolerance : float
        Matching radius, pixels.
    """

    n_true_links: int
    n_true_links_detected: int
    n_recovered: int
    n_links: int
    n_correct: int
    n_switch: int
    n_unmatched: int
    lengths: np.ndarray = field(repr=False)
    true_lengths: np.ndarray = field(repr=False)
    tolerance: float = 1.0

    @property
    def true_link_fraction(self) -> float:
        return _frac(self.n_recovered, self.n_true_links)

    @property
    def true_link_fraction_detected(self) -> float:
        return _frac(self.n_recovered, self.n_true_links_detected)

    @property
    def false_link_fraction(self) -> float:
        return _frac(self.n_switch + self.n_unmatched, self.n_links)

    def to_dict(self) -> dict:
        """A JSON-ready summary (NaN becomes ``None``), lengths summarised by :func:`length_summary`."""
        d = {
            "true_link_fraction": self.true_link_fraction,
            "true_link_fraction_detected": self.true_link_fraction_detected,
            "false_link_fraction": self.false_link_fraction,
            "n_true_links": self.n_true_links,
            "n_true_links_detected": self.n_true_links_detected,
            "n_recovered": self.n_recovered,
            "n_links": self.n_links,
            "n_correct": self.n_correct,
            "n_switch": self.n_switch,
            "n_unmatched": self.n_unmatched,
            "track_length": length_summary(self.lengths),
            "true_track_length": length_summary(self.true_lengths),
            "tolerance_px": float(self.tolerance),
        }
        return _none_nan(d)


def _frac(a: int, b: int) -> float:
    return float(a) / float(b) if b else math.nan


def _none_nan(v):
    if isinstance(v, dict):
        return {k: _none_nan(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _columns(table, name: str) -> dict[str, np.ndarray]:
    cols = table.columns if isinstance(table, PointTable) else dict(table) if isinstance(table, dict) else None
    if cols is None:
        raise CycleULMError(f"{name} must be a table with columns track_id, frame, y, x.")
    missing = [c for c in ("track_id", "frame", "y", "x") if c not in cols]
    if missing:
        raise CycleULMError(f"{name} lacks column(s) {missing}; need track_id, frame, y, x (pixels).")
    keep = np.ones(len(cols["frame"]), bool)
    if "interpolated" in cols:
        keep = ~(np.asarray(cols["interpolated"], float) > 0)
    out = {c: np.asarray(cols[c])[keep] for c in ("track_id", "frame", "y", "x")}
    out["track_id"] = out["track_id"].astype(np.int64)
    out["frame"] = out["frame"].astype(np.int64)
    return out


def _links(tid: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a, b) of consecutive points of each track."""
    order = np.lexsort([frame, tid])
    same = tid[order][1:] == tid[order][:-1]
    return order[:-1][same], order[1:][same]


def score_tracks(ground_truth, tracks, tolerance: float = 1.0) -> TrackScore:
    """Score output tracks against true tracks: links recovered, false links, lengths.

    Parameters
    ----------
    ground_truth : Localisations or Tracks
        True points with ``track_id, frame, y, x`` (pixels), e.g.
        ``Simulation.ground_truth``.
    tracks : Tracks
        Output of a linker (``track_id, frame, y, x``; rows with
        ``interpolated == 1`` are ignored).
    tolerance : float
        Largest distance, pixels, at which an output point is the same
        bubble as a true point of its frame.  Default 1.

    Returns
    -------
    TrackScore

    Raises
    ------
    CycleULMError
        On tables without ``track_id, frame, y, x`` or a bad tolerance.
    """
    gt = _columns(ground_truth, "ground_truth")
    out = _columns(tracks, "tracks")
    gt_pos = np.stack([gt["frame"].astype(float), gt["y"], gt["x"]], axis=1).reshape(-1, 3)
    out_pos = np.stack([out["frame"].astype(float), out["y"], out["x"]], axis=1).reshape(-1, 3)
    m = match_localisations(gt_pos, out_pos, tolerance=tolerance)
    # Output row of each true point and true track of each output point (-1: unmatched).
    det_of_gt = np.full(len(gt_pos), -1, np.int64)
    det_of_gt[m.gt_index] = m.det_index
    gtid_of_det = np.full(len(out_pos), -1, np.int64)
    gtid_of_det[m.det_index] = gt["track_id"][m.gt_index]

    ga, gb = _links(gt["track_id"], gt["frame"])
    da, db = det_of_gt[ga], det_of_gt[gb]
    detected = (da >= 0) & (db >= 0)
    oa, ob = _links(out["track_id"], out["frame"])
    # Successor of each output row within its track (-1 at a track's end).
    succ = np.full(len(out_pos), -1, np.int64)
    succ[oa] = ob
    recovered = detected & (succ[np.where(detected, da, 0)] == db)

    ia, ib = gtid_of_det[oa], gtid_of_det[ob]
    unmatched = (ia < 0) | (ib < 0)
    correct = ~unmatched & (ia == ib)
    switch = ~unmatched & (ia != ib)

    _, true_lengths = np.unique(gt["track_id"], return_counts=True)
    _, lengths = np.unique(out["track_id"], return_counts=True)
    return TrackScore(
        n_true_links=int(ga.size),
        n_true_links_detected=int(detected.sum()),
        n_recovered=int(recovered.sum()),
        n_links=int(oa.size),
        n_correct=int(correct.sum()),
        n_switch=int(switch.sum()),
        n_unmatched=int(unmatched.sum()),
        lengths=lengths.astype(np.int64),
        true_lengths=true_lengths.astype(np.int64),
        tolerance=float(tolerance),
    )
