"""Linking microbubble localisations into tracks (streaming or one-shot).

The linker follows the multi-feature tracking idea of Yan et al. (2022, IEEE
TMI, "MFT"): frame after frame, the detections of the new frame are assigned
to the live tracks by a *global* optimal assignment
(:func:`scipy.optimize.linear_sum_assignment`) on a cost that combines motion
and appearance:

``cost = |z - z_pred| + intensity_weight * |log(I_det / I_track)|``

* ``z_pred`` is the position predicted by a constant-velocity Kalman filter
  per track (state ``y, x, vy, vx``; continuous white-noise acceleration
  model with ``process_noise`` and ``measurement_noise``).  A track with a
  single point has no velocity yet: its motion cost is the displacement per
  frame ``|z - z_last| / dt`` (nearest-neighbour linking).
* ``I_track`` is the geometric mean intensity of the track's points so far.
  The term is skipped when the localisations have no ``intensity`` column,
  when ``intensity_weight`` is 0, or for non-positive / NaN intensities.

Gates (a pair outside them is never linked):

* speed: ``|z - z_last| <= max_distance * dt`` where ``dt`` is the number of
  frames since the track's last detection and ``max_distance`` is the largest
  displacement in pixels per frame.  Set it from the fastest flow you expect
  with :func:`max_distance_for` (25 mm/s at 500 Hz with 50 um pixels is
  1 px/frame); add some margin for localisation error.
* prediction (tracks with two points or more): ``|z - z_pred| <= max_distance``.
* cost: a link is made only when it is worth more than leaving both the track
  and the detection unlinked, i.e. ``cost < max_cost``; by default
  ``max_cost = max_distance + intensity_weight * ln 4`` (a detection at the
  distance gate may still link with a 4x intensity change).  This, rather
  than a maximum-cardinality matching, stops a good link from being broken to
  make two poor ones.

Candidate pairs are found by a dense distance matrix for small frames and a
KD-tree (:class:`scipy.spatial.cKDTree`) otherwise; the bipartite candidate
graph is split into connected components and each component is solved on its
own (isolated pairs directly), which gives the same optimum as one global
problem.

Gap closing: a track that gets no detection keeps predicting; it may miss up
to ``max_gap`` consecutive frames and is terminated when a further frame
passes without a detection.  The missed frames are not filled in the output
unless ``interpolate_gaps=True`` (linear interpolation, flagged by an
``interpolated`` column equal to 1).

Motion prior (optional, ``motion_prior``): a callable ``prior(frames, y, x)
-> (vy, vx)`` giving an expected velocity field in pixels/frame (NaN where
unknown), e.g. a :class:`~napari_cycleulm.track.motion_prior.VelocityPrior` of
MBT-Net's velocity maps (the paper's proposal for explicit tracks).  For each
live track the prior is sampled at its (Kalman) position at its last
detection and fused with the track's own velocity as an independent estimate
of standard deviation ``prior_noise`` (pixels/frame):
``v = v_track + w (v_prior - v_track)`` with ``w = p_vv / (p_vv + prior_noise**2)``,
``p_vv`` the Kalman velocity variance predicted over ``dt``.  A track with a
single point has ``p_vv = max_distance**2`` (no velocity yet), so it follows
the prior almost fully; an established track blends the two.  The linking
prediction is then ``z_last_kalman + v dt``, and tracks with a prior (one
point or more) are costed and gated on the distance to it (``|z - z_pred|``,
gate ``max_distance``) instead of nearest-neighbour.  The Kalman state itself
is updated as without a prior, so the prior steers the assignment only.
Where the prior is NaN the track is linked exactly as without a prior, and
``motion_prior=None`` (the default) is the plain Kalman linker.

Output velocities ``vy, vx`` (pixels/frame) are the slope of a least-squares
line through ``velocity_window`` consecutive points of the track (a window
shifted inwards at the track ends), using the true frame numbers, so gaps are
handled; a one-point track gets NaN.  Output positions are the localisations
themselves (not the Kalman-filtered positions).  Track ids are consecutive
from 0 in order of first appearance (ties within a frame: input row order),
identical whether the data arrive in one call or in blocks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..errors import CycleULMError
from ..io.tables import Localisations, PointTable, Tracks

__all__ = ["Linker", "track", "max_distance_for"]

#: Columns of the input that the linker computes itself and therefore drops.
_RESERVED = ("track_id", "vy", "vx", "interpolated")
#: Above this many track x detection pairs per frame, candidates come from a KD-tree.
_DENSE_PAIRS = 40_000
# Per-track lifecycle of a creation index (cid): output id or one of these.
_UNRESOLVED = -1
_DROPPED = -2


def max_distance_for(max_speed_mm_s: float, frame_rate_hz: float, pixel_size_um: float) -> float:
    """Largest displacement in pixels per frame for a flow speed.

    Parameters
    ----------
    max_speed_mm_s : float
        Fastest microbubble speed to track, mm/s.
    frame_rate_hz : float
        Frame rate of the (compounded) CEUS frames, Hz.
    pixel_size_um : float
        Pixel size of the frames, micrometres.

    Returns
    -------
    float
        ``max_speed / (frame_rate * pixel_size)`` in pixels per frame; e.g.
        25 mm/s at 500 Hz with 50 um pixels gives 1.0.  Pass it (with some
        margin for localisation error) as ``max_distance``.

    Raises
    ------
    CycleULMError
        If an argument is not a positive finite number.
    """
    for name, val in (
        ("max_speed_mm_s", max_speed_mm_s),
        ("frame_rate_hz", frame_rate_hz),
        ("pixel_size_um", pixel_size_um),
    ):
        if not (isinstance(val, (int, float, np.number)) and math.isfinite(val) and val > 0):
            raise CycleULMError(f"{name} must be a positive number, got {val!r}.")
    return float(max_speed_mm_s) * 1000.0 / (float(frame_rate_hz) * float(pixel_size_um))


class _Grow:
    """A 1-D numpy array that grows by appending (amortised doubling)."""

    def __init__(self, dtype, fill) -> None:
        self.data = np.full(64, fill, dtype=dtype)
        self.fill = fill
        self.n = 0

    def extend(self, k: int) -> np.ndarray:
        """Append ``k`` fill values; return their indices."""
        need = self.n + k
        if need > self.data.size:
            new = np.full(max(need, 2 * self.data.size), self.fill, dtype=self.data.dtype)
            new[: self.n] = self.data[: self.n]
            self.data = new
        idx = np.arange(self.n, need)
        self.n = need
        return idx


def _check_number(name, val, minimum, strict=True, integer=False):
    ok = isinstance(val, (int, float, np.number)) and not isinstance(val, bool)
    ok = ok and math.isfinite(val) and (val > minimum if strict else val >= minimum)
    if integer:
        ok = ok and float(val) == int(val)
    if not ok:
        kind = "an integer" if integer else "a number"
        rel = ">" if strict else ">="
        raise CycleULMError(f"{name} must be {kind} {rel} {minimum}, got {val!r}.")


class Linker:
    """Incremental tracker: feed blocks of localisations, collect finished tracks.

    Parameters
    ----------
    max_distance : float
        Largest displacement in pixels per frame (speed gate, also the gate on
        the distance to the Kalman prediction).  Default 3.0.  Set it from
        ``max_distance_for(max_speed_mm_s, frame_rate_hz, pixel_size_um)``.
    max_gap : int
        Number of consecutive frames a track may miss and still continue.
        Default 1; 0 disables gap closing.
    min_length : int
        Minimum number of frames *with detections* for a track to be output.
        Default 4.
    intensity_weight : float
        Weight (pixels per unit of ``|log(I_det / I_track)|``) of the intensity
        term; 0 disables it.  Default 0.5.  Ignored without an ``intensity``
        column.
    process_noise : float
        Standard deviation of the random change of velocity per frame,
        pixels/frame (continuous white-noise acceleration).  Default 0.3.
    measurement_noise : float
        Standard deviation of the localisation error, pixels.  Default 0.2.
    max_cost : float or None
        Links with a cost at or above this are not made.  Default
        ``max_distance + intensity_weight * ln 4``.
    velocity_window : int
        Number of consecutive points in the least-squares fit of the output
        velocities.  Default 5.
    interpolate_gaps : bool
        Fill frames missed inside a track by linear interpolation (rows with
        ``interpolated == 1``).  Default False: gap frames are absent.
    motion_prior : callable, optional
        ``prior(frames, y, x) -> (vy, vx)`` on 1-D arrays (frame indices,
        pixels), velocities in pixels/frame, NaN where unknown; see the module
        notes and :class:`~napari_cycleulm.track.motion_prior.VelocityPrior`.
        Default None: constant-velocity Kalman prediction only.
    prior_noise : float
        Standard deviation of the prior's velocity error, pixels/frame; larger
        values trust the track's own velocity more.  Default 0.5.  Ignored
        without ``motion_prior``.

    Notes
    -----
    :meth:`add` takes a block of consecutive frames (frames with no
    detections are simply absent) and returns the tracks finished so far;
    :meth:`finish` returns the rest.  Frames must increase from block to
    block.  Concatenating all returned tables equals :func:`track` on all the
    localisations at once.
    """

    def __init__(
        self,
        max_distance: float = 3.0,
        max_gap: int = 1,
        min_length: int = 4,
        intensity_weight: float = 0.5,
        process_noise: float = 0.3,
        measurement_noise: float = 0.2,
        max_cost: float | None = None,
        velocity_window: int = 5,
        interpolate_gaps: bool = False,
        motion_prior=None,
        prior_noise: float = 0.5,
    ) -> None:
        _check_number("max_distance", max_distance, 0)
        _check_number("max_gap", max_gap, 0, strict=False, integer=True)
        _check_number("min_length", min_length, 1, strict=False, integer=True)
        _check_number("intensity_weight", intensity_weight, 0, strict=False)
        _check_number("process_noise", process_noise, 0)
        _check_number("measurement_noise", measurement_noise, 0)
        _check_number("velocity_window", velocity_window, 2, strict=False, integer=True)
        _check_number("prior_noise", prior_noise, 0)
        if motion_prior is not None and not callable(motion_prior):
            raise CycleULMError(
                "motion_prior must be a callable prior(frames, y, x) -> (vy, vx) (e.g. a "
                f"motion_prior.VelocityPrior), got {type(motion_prior).__name__}."
            )
        if max_cost is None:
            max_cost = float(max_distance) + float(intensity_weight) * math.log(4.0)
        _check_number("max_cost", max_cost, 0)
        self.max_distance = float(max_distance)
        self.max_gap = int(max_gap)
        self.min_length = int(min_length)
        self.intensity_weight = float(intensity_weight)
        self.process_noise = float(process_noise)
        self.measurement_noise = float(measurement_noise)
        self.max_cost = float(max_cost)
        self.velocity_window = int(velocity_window)
        self.interpolate_gaps = bool(interpolate_gaps)
        self.motion_prior = motion_prior
        self.prior_noise = float(prior_noise)

        self._q = self.process_noise**2
        self._r = self.measurement_noise**2
        self._v0 = self.max_distance**2  # prior variance of an unknown velocity
        self._last_frame: int | None = None
        self._finished = False
        self._has_intensity: bool | None = None
        # Live tracks, one row each.
        self._cid = np.empty(0, np.int64)
        self._last = np.empty(0, np.int64)  # frame of last detection
        self._zlast = np.empty((0, 2))  # last detected position
        self._kpos = np.empty((0, 2))  # Kalman position, velocity (per axis y, x)
        self._kvel = np.empty((0, 2))
        self._P = np.empty((0, 3))  # shared per-axis covariance: p_pp, p_pv, p_vv
        self._npts = np.empty(0, np.int64)
        self._lsum = np.empty(0)  # sum and count of log intensities
        self._lcnt = np.empty(0)
        # Every track ever created, indexed by creation id.
        self._cid_npts = _Grow(np.int64, 0)
        self._cid_dead = _Grow(bool, False)
        self._cid_out = _Grow(np.int64, _UNRESOLVED)
        self._head = 0  # first creation id not yet resolved to an output id or dropped
        self._next_id = 0
        self._pending: list[Localisations] = []  # rows of tracks not yet emitted

    # -- public -------------------------------------------------------------
    def add(self, localisations, last_frame: int | None = None) -> Tracks:
        """Link a block of frames; return the tracks that ended and are long enough.

        Parameters
        ----------
        localisations : Localisations
            Detections with columns ``frame, y, x`` (pixels) and optionally
            ``intensity``; every frame must be later than the frames of earlier
            blocks.  Rows may come in any order; rows of one frame keep their
            order.
        last_frame : int, optional
            Last frame covered by this block when it ends with frames that have
            no detections; lets tracks that can no longer continue be returned
            now.  Default: the last frame with a detection.

        Returns
        -------
        Tracks
            Finished tracks, sorted by ``track_id`` then ``frame``.

        Raises
        ------
        CycleULMError
            On missing columns, NaN positions, negative frames, frames not after
            the previous block, or a call after :meth:`finish`.
        """
        if self._finished:
            raise CycleULMError("this Linker is finished; create a new Linker to track more data.")
        locs = _as_localisations(localisations)
        frames = locs["frame"]
        if len(locs):
            if frames.min() < 0:
                raise CycleULMError("frame numbers must be >= 0 (0-based frame indices).")
            if self._last_frame is not None and frames.min() <= self._last_frame:
                raise CycleULMError(
                    f"frames must increase from block to block: this block starts at frame "
                    f"{int(frames.min())} but frames up to {self._last_frame} were already "
                    "linked. Feed blocks in time order without overlap."
                )
            if "intensity" in locs and self.intensity_weight > 0:
                if self._has_intensity is False:
                    raise CycleULMError("some blocks have an 'intensity' column and some do not.")
                self._has_intensity = True
            elif self.intensity_weight > 0:
                if self._has_intensity is True:
                    raise CycleULMError("some blocks have an 'intensity' column and some do not.")
                self._has_intensity = False
        end = int(frames.max()) if len(locs) else None
        if last_frame is not None:
            _check_number("last_frame", last_frame, -1, integer=True)
            if end is not None and last_frame < end:
                raise CycleULMError(
                    f"last_frame={last_frame} is before the block's last frame {end}."
                )
            if self._last_frame is not None and last_frame <= self._last_frame and end is None:
                raise CycleULMError(
                    f"last_frame={last_frame} does not advance past frame {self._last_frame}."
                )
            end = int(last_frame)

        if len(locs):
            self._link_block(locs)
        if end is not None:
            self._last_frame = end
            # Tracks whose last chance (last + max_gap + 1) is already past are over.
            self._kill(self._last + self.max_gap + 1 <= end)
        return self._emit()

    def finish(self) -> Tracks:
        """End all live tracks and return the remaining long-enough ones."""
        if self._finished:
            raise CycleULMError("finish() was already called on this Linker.")
        self._kill(np.ones(self._cid.size, bool))
        self._finished = True
        return self._emit()

    # -- linking --------------------------------------------------------------
    def _link_block(self, locs: Localisations) -> None:
        order = np.argsort(locs["frame"], kind="stable")
        locs = locs.select(order)
        frames = locs["frame"]
        pos = np.stack([locs["y"], locs["x"]], axis=1)
        if self._has_intensity:
            inten = locs["intensity"]
            with np.errstate(divide="ignore", invalid="ignore"):
                logi = np.where(inten > 0, np.log(np.where(inten > 0, inten, 1.0)), np.nan)
        else:
            logi = None
        row_cid = np.empty(len(locs), np.int64)
        cuts = np.flatnonzero(np.diff(frames)) + 1
        starts = np.concatenate([[0], cuts])
        stops = np.concatenate([cuts, [len(locs)]])
        for a, b in zip(starts, stops):
            row_cid[a:b] = self._step(
                int(frames[a]), pos[a:b], None if logi is None else logi[a:b]
            )
        cols = {n: c for n, c in locs.columns.items() if n not in _RESERVED}
        cols["track_id"] = row_cid  # creation ids for now
        self._pending.append(Localisations(cols))

    def _step(self, f: int, z: np.ndarray, logi: np.ndarray | None) -> np.ndarray:
        """Link the detections ``z`` of frame ``f``; return their creation ids."""
        self._kill(f - self._last > self.max_gap + 1)
        n, m = self._cid.size, z.shape[0]
        det_cid = np.full(m, -1, np.int64)
        ti = dj = np.empty(0, np.int64)
        if n and m:
            dt = (f - self._last).astype(np.float64)
            pred = self._kpos + self._kvel * dt[:, None]
            if self.motion_prior is None:
                ti, dj, cost = self._candidates(z, logi, dt, pred)
            else:
                link_pred, has_prior = self._prior_prediction(dt, pred)
                ti, dj, cost = self._candidates(z, logi, dt, link_pred, has_prior)
            ti, dj = self._assign(ti, dj, cost)
            if ti.size:
                self._update(ti, z[dj], dt[ti], pred[ti], None if logi is None else logi[dj], f)
                det_cid[dj] = self._cid[ti]
        # Unassigned detections start new tracks.
        new = np.flatnonzero(det_cid < 0)
        if new.size:
            cids = self._cid_npts.extend(new.size)
            self._cid_dead.extend(new.size)
            self._cid_out.extend(new.size)
            self._cid_npts.data[cids] = 1
            det_cid[new] = cids
            zn = z[new]
            k = new.size
            self._cid = np.concatenate([self._cid, cids])
            self._last = np.concatenate([self._last, np.full(k, f, np.int64)])
            self._zlast = np.concatenate([self._zlast, zn])
            self._kpos = np.concatenate([self._kpos, zn])
            self._kvel = np.concatenate([self._kvel, np.zeros((k, 2))])
            p0 = np.tile([self._r, 0.0, self._v0], (k, 1))
            self._P = np.concatenate([self._P, p0])
            self._npts = np.concatenate([self._npts, np.ones(k, np.int64)])
            if logi is None:
                ls, lc = np.zeros(k), np.zeros(k)
            else:
                ok = np.isfinite(logi[new])
                ls, lc = np.where(ok, logi[new], 0.0), ok.astype(np.float64)
            self._lsum = np.concatenate([self._lsum, ls])
            self._lcnt = np.concatenate([self._lcnt, lc])
        return det_cid

    def _prior_prediction(self, dt, pred):
        """Positions predicted with the motion prior, and which tracks have a prior value."""
        n = self._cid.size
        out = self.motion_prior(self._last.copy(), self._kpos[:, 0].copy(), self._kpos[:, 1].copy())
        try:
            vy, vx = (np.asarray(v, dtype=np.float64).reshape(-1) for v in out)
        except (TypeError, ValueError):
            raise CycleULMError("motion_prior must return a pair (vy, vx) of arrays.") from None
        if vy.size != n or vx.size != n:
            raise CycleULMError(
                f"motion_prior returned {vy.size} and {vx.size} values for {n} positions."
            )
        has = np.isfinite(vy) & np.isfinite(vx)
        pvv = self._P[:, 2] + self._q * dt  # velocity variance predicted over dt
        w = pvv / (pvv + self.prior_noise**2)
        vp = np.stack([np.where(has, vy, 0.0), np.where(has, vx, 0.0)], axis=1)
        v = self._kvel + w[:, None] * (vp - self._kvel)
        link_pred = np.where(has[:, None], self._kpos + v * dt[:, None], pred)
        return link_pred, has

    def _candidates(self, z, logi, dt, pred, has_prior=None):
        """Gated (track, detection, cost) triples with cost < max_cost."""
        n, m = self._cid.size, z.shape[0]
        if n * m <= _DENSE_PAIRS:
            ti, dj = np.divmod(np.arange(n * m), m)
        else:
            reach = self.max_distance * float(dt.max()) * (1 + 1e-9) + 1e-9
            pairs = cKDTree(self._zlast).query_ball_tree(cKDTree(z), reach)
            lens = np.fromiter((len(p) for p in pairs), np.int64, n)
            ti = np.repeat(np.arange(n), lens)
            dj = np.fromiter((j for p in pairs for j in p), np.int64, int(lens.sum()))
        dtt = dt[ti]
        d_last = np.hypot(z[dj, 0] - self._zlast[ti, 0], z[dj, 1] - self._zlast[ti, 1])
        d_pred = np.hypot(z[dj, 0] - pred[ti, 0], z[dj, 1] - pred[ti, 1])
        fresh = self._npts[ti] < 2
        if has_prior is not None:
            fresh &= ~has_prior[ti]  # a prior predicts even a one-point track
        ok = (d_last <= self.max_distance * dtt) & (fresh | (d_pred <= self.max_distance))
        cost = np.where(fresh, d_last / dtt, d_pred)
        if logi is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                mean_log = self._lsum[ti] / self._lcnt[ti]
            term = np.abs(logi[dj] - mean_log)
            cost = cost + self.intensity_weight * np.where(np.isfinite(term), term, 0.0)
        ok &= cost < self.max_cost
        return ti[ok], dj[ok], cost[ok]

    def _assign(self, ti, dj, cost):
        """Minimum-cost partial matching, solved per connected component."""
        if ti.size == 0:
            return ti, dj
        n, m = self._cid.size, int(dj.max()) + 1
        deg_t = np.bincount(ti, minlength=n)
        deg_d = np.bincount(dj, minlength=m)
        lone = (deg_t[ti] == 1) & (deg_d[dj] == 1)
        out_t, out_d = [ti[lone]], [dj[lone]]
        rest = ~lone
        if rest.any():
            ti, dj, cost = ti[rest], dj[rest], cost[rest]
            graph = coo_matrix((np.ones(ti.size), (ti, n + dj)), shape=(n + m, n + m))
            _, labels = connected_components(graph, directed=False)
            lab = labels[ti]
            order = np.argsort(lab, kind="stable")
            ti, dj, cost, lab = ti[order], dj[order], cost[order], lab[order]
            cuts = np.flatnonzero(np.diff(lab)) + 1
            for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [lab.size]])):
                rows, ri = np.unique(ti[a:b], return_inverse=True)
                cols, ci = np.unique(dj[a:b], return_inverse=True)
                # Gain of each link over leaving both ends unlinked; 0 = no link.
                gain = np.zeros((rows.size, cols.size))
                gain[ri, ci] = cost[a:b] - self.max_cost
                r, c = linear_sum_assignment(gain)
                keep = gain[r, c] < 0
                out_t.append(rows[r[keep]])
                out_d.append(cols[c[keep]])
        return np.concatenate(out_t), np.concatenate(out_d)

    def _update(self, ti, z, dt, pred, logi, f) -> None:
        """Kalman predict (over ``dt`` frames) and update for the linked tracks."""
        q = self._q
        p = self._P[ti]
        ppp = p[:, 0] + 2 * dt * p[:, 1] + dt**2 * p[:, 2] + q * dt**3 / 3
        ppv = p[:, 1] + dt * p[:, 2] + q * dt**2 / 2
        pvv = p[:, 2] + q * dt
        s = ppp + self._r
        k0, k1 = ppp / s, ppv / s
        resid = z - pred
        self._kpos[ti] = pred + k0[:, None] * resid
        self._kvel[ti] = self._kvel[ti] + k1[:, None] * resid
        self._P[ti] = np.stack([(1 - k0) * ppp, (1 - k0) * ppv, pvv - k1 * ppv], axis=1)
        self._zlast[ti] = z
        self._last[ti] = f
        self._npts[ti] += 1
        self._cid_npts.data[self._cid[ti]] += 1
        if logi is not None:
            ok = np.isfinite(logi)
            self._lsum[ti] += np.where(ok, logi, 0.0)
            self._lcnt[ti] += ok

    def _kill(self, mask: np.ndarray) -> None:
        if not mask.any():
            return
        self._cid_dead.data[self._cid[mask]] = True
        keep = ~mask
        for name in ("_cid", "_last", "_zlast", "_kpos", "_kvel", "_P", "_npts", "_lsum", "_lcnt"):
            setattr(self, name, getattr(self, name)[keep])

    # -- output ---------------------------------------------------------------
    def _resolve(self) -> None:
        """Give output ids, in creation order, to tracks that are sure to be output."""
        npts, dead, out = self._cid_npts.data, self._cid_dead.data, self._cid_out.data
        h = self._head
        while h < self._cid_npts.n:
            if npts[h] >= self.min_length:
                out[h] = self._next_id
                self._next_id += 1
            elif dead[h]:
                out[h] = _DROPPED
            else:
                break
            h += 1
        self._head = h

    def _emit(self) -> Tracks:
        self._resolve()
        pend = Localisations.concat(self._pending) if self._pending else Localisations()
        if not len(pend):
            self._pending = []
            return _empty_tracks(self.interpolate_gaps, self._has_intensity)
        cid = pend["track_id"]
        out = self._cid_out.data[cid]
        dead = self._cid_dead.data[cid]
        emit = dead & (out >= 0)
        keep = ~emit & (out != _DROPPED)
        self._pending = [pend.select(keep)] if keep.any() else []
        if not emit.any():
            return _empty_tracks(self.interpolate_gaps, self._has_intensity, pend.names)
        done = pend.select(emit).with_columns(track_id=out[emit])
        return _finalise(done, self.velocity_window, self.interpolate_gaps)


def _as_localisations(localisations) -> Localisations:
    if isinstance(localisations, PointTable):
        cols = localisations.columns
    elif isinstance(localisations, dict):
        cols = localisations
    else:
        raise CycleULMError(
            f"expected a Localisations table (columns frame, y, x), got "
            f"{type(localisations).__name__}."
        )
    missing = [c for c in ("frame", "y", "x") if c not in cols]
    if missing:
        raise CycleULMError(
            f"localisations lack column(s) {missing}; tracking needs frame, y, x (pixels)."
        )
    locs = Localisations(dict(cols))
    if len(locs) and not (np.isfinite(locs["y"]).all() and np.isfinite(locs["x"]).all()):
        raise CycleULMError("localisations contain NaN or infinite y/x positions; drop those rows.")
    return locs


def _empty_tracks(interpolate: bool, intensity, names=()) -> Tracks:
    cols = {n: [] for n in ("track_id", "frame", "y", "x", "vy", "vx")}
    for n in names:
        cols.setdefault(n, [])
    if intensity:
        cols.setdefault("intensity", [])
    if interpolate:
        cols["interpolated"] = []
    return Tracks(cols)


def _finalise(done: Localisations, window: int, interpolate: bool) -> Tracks:
    """Sort, add velocities and (optionally) interpolated gap rows."""
    done = done.sort("track_id", "frame")
    tid = done["track_id"]
    t = done["frame"].astype(np.float64)
    vy, vx = _window_slopes(tid, t, done["y"], done["x"], window)
    cols = {"track_id": tid, "frame": done["frame"], "y": done["y"], "x": done["x"]}
    cols.update(vy=vy, vx=vx)
    cols.update({n: c for n, c in done.columns.items() if n not in cols})
    tracks = Tracks(cols)
    if interpolate:
        tracks = _interpolate_gaps(tracks)
    return tracks


def _window_slopes(tid, t, y, x, window):
    """Least-squares slope of y(t), x(t) over ``window`` consecutive points per track."""
    n = tid.size
    if n == 0:
        return np.empty(0), np.empty(0)
    idx = np.arange(n)
    new = np.concatenate([[True], tid[1:] != tid[:-1]])
    first = np.flatnonzero(new)
    seg = np.cumsum(new) - 1
    s = first[seg]
    e = np.append(first[1:], n)[seg]
    start = np.clip(idx - window // 2, s, np.maximum(s, e - window))
    stop = np.minimum(start + window, e)
    sums = np.zeros((6, n))  # cnt, st, stt, sy, sty, sx + separate stx below
    stx = np.zeros(n)
    for k in range(window):
        j = start + k
        ok = j < stop
        jj = np.where(ok, j, idx)
        dtk = np.where(ok, t[jj] - t, 0.0)  # relative times avoid cancellation
        yk = np.where(ok, y[jj] - y, 0.0)
        xk = np.where(ok, x[jj] - x, 0.0)
        sums[0] += ok
        sums[1] += dtk
        sums[2] += dtk * dtk
        sums[3] += yk
        sums[4] += dtk * yk
        sums[5] += xk
        stx += dtk * xk
    cnt, st, stt, sy, sty, sx = sums
    den = cnt * stt - st * st
    with np.errstate(divide="ignore", invalid="ignore"):
        vy = np.where(den > 0, (cnt * sty - st * sy) / den, np.nan)
        vx = np.where(den > 0, (cnt * stx - st * sx) / den, np.nan)
    return vy, vx


def _interpolate_gaps(tracks: Tracks) -> Tracks:
    tid, f = tracks["track_id"], tracks["frame"]
    n = len(tracks)
    flag = np.zeros(n)
    if n < 2:
        return tracks.with_columns(interpolated=flag)
    same = tid[1:] == tid[:-1]
    gap = np.where(same, f[1:] - f[:-1] - 1, 0)
    if not gap.any():
        return tracks.with_columns(interpolated=flag)
    a = np.repeat(np.arange(n - 1), gap)  # row before each missing frame
    k = np.arange(a.size) - np.repeat(np.cumsum(gap) - gap, gap) + 1  # 1..gap
    w = k / (f[a + 1] - f[a])
    cols = {}
    for name, col in tracks.columns.items():
        if name == "track_id":
            cols[name] = tid[a]
        elif name == "frame":
            cols[name] = f[a] + k
        elif name in ("y", "x", "vy", "vx", "intensity"):
            cols[name] = col[a] + w * (col[a + 1] - col[a])
        else:
            cols[name] = np.full(a.size, np.nan)
    cols["interpolated"] = np.ones(a.size)
    filled = Tracks(cols)
    return Tracks.concat([tracks.with_columns(interpolated=flag), filled]).sort("track_id", "frame")


def track(localisations, **params) -> Tracks:
    """Link localisations into tracks in one call.

    Parameters
    ----------
    localisations : Localisations
        Detections with ``frame, y, x`` (pixels) and optionally ``intensity``.
    **params
        Parameters of :class:`Linker` (``max_distance=3.0``, ``max_gap=1``,
        ``min_length=4``, ``intensity_weight=0.5``, ``process_noise=0.3``,
        ``measurement_noise=0.2``, ``max_cost=None``, ``velocity_window=5``,
        ``interpolate_gaps=False``, ``motion_prior=None``, ``prior_noise=0.5``).

    Returns
    -------
    Tracks
        Columns ``track_id, frame, y, x, vy, vx`` (pixels, pixels/frame), the
        other input columns (e.g. ``intensity``), sorted by track then frame;
        ids consecutive from 0 in order of first appearance.

    Raises
    ------
    CycleULMError
        On bad parameters or localisations without ``frame, y, x``.
    """
    linker = Linker(**params)
    parts = [linker.add(localisations), linker.finish()]
    return Tracks.concat(parts).sort("track_id", "frame")
