"""Tables, atomic writes and progress generators: the plumbing every stage relies on."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_cycleulm._atomic import atomic_path, write_text_atomic
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.progress import Cancelled, Progress, drive
from napari_cycleulm.io.tables import Localisations, TableWriter, Tracks


def test_localisations_round_trip_through_csv(tmp_path):
    locs = Localisations({"frame": [0, 2], "y": [1.25, 3.5], "x": [4.0, 5.125], "score": [0.9, 0.4]})
    locs.to_csv(tmp_path / "l.csv")
    back = Localisations.from_csv(tmp_path / "l.csv")
    assert back.names == ["frame", "y", "x", "score"]
    np.testing.assert_allclose(back.positions, locs.positions)
    assert back["frame"].dtype == np.int64


def test_napari_points_export_columns_are_understood(tmp_path):
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,axis-2\n0,3,10.5,20.25\n")
    locs = Localisations.from_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(locs.positions, [[3, 10.5, 20.25]])


def test_missing_columns_and_bad_values_are_explained(tmp_path):
    (tmp_path / "a.csv").write_text("frame,y\n0,1\n")
    with pytest.raises(CycleULMError, match="lacks column"):
        Localisations.from_csv(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("frame,y,x\n0,1,abc\n")
    with pytest.raises(CycleULMError, match="non-numeric"):
        Localisations.from_csv(tmp_path / "b.csv")
    with pytest.raises(CycleULMError, match="does not exist"):
        Localisations.from_csv(tmp_path / "missing.csv")
    with pytest.raises(CycleULMError, match="whole numbers"):
        Localisations({"frame": [0.5], "y": [0], "x": [0]})
    with pytest.raises(CycleULMError, match="different lengths"):
        Localisations({"frame": [0, 1], "y": [0], "x": [0]})


def test_selection_concat_and_frame_ranges():
    a = Localisations({"frame": [0, 1, 2], "y": [0, 1, 2], "x": [0, 0, 0], "score": [1, 2, 3]})
    b = Localisations({"frame": [3], "y": [3], "x": [0]})
    both = Localisations.concat([a, b])
    assert len(both) == 4
    assert np.isnan(both["score"][3])
    assert list(both.in_frames(1, 3)["frame"]) == [1, 2]
    assert list(both.sort("y")["y"])[::-1] == sorted(both["y"], reverse=True)
    t = Tracks({"track_id": [0, 0, 1], "frame": [0, 1, 0], "y": [0, 1, 2], "x": [0, 0, 0]})
    assert t.n_tracks == 2 and t.lengths() == {0: 2, 1: 1}


def test_table_writer_streams_and_is_atomic(tmp_path):
    path = tmp_path / "tracks.csv"
    with TableWriter(path, table_type=Tracks) as out:
        out.write(Tracks({"track_id": [0], "frame": [0], "y": [1], "x": [2]}))
        out.write(Tracks({"track_id": [1], "frame": [5], "y": [3], "x": [4]}))
    assert Tracks.from_csv(path).n_tracks == 2
    before = path.read_text()
    with pytest.raises(RuntimeError):
        with TableWriter(path, table_type=Tracks) as out:
            out.write(Tracks({"track_id": [9], "frame": [0], "y": [0], "x": [0]}))
            raise RuntimeError("interrupted")
    assert path.read_text() == before  # the old table survives an interrupted run
    assert not list(tmp_path.glob(".*.part"))
    with TableWriter(tmp_path / "empty.csv", table_type=Tracks):
        pass
    assert (tmp_path / "empty.csv").read_text().strip() == "track_id,frame,y,x"


def test_atomic_writes_keep_old_content_on_failure_and_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "first")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert target.read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def _counting(n, closed):
    try:
        for i in range(n):
            yield Progress(i + 1, n, "count")
        return "done"
    finally:
        closed.append(True)


def test_drive_returns_the_generator_result_and_cancels_cleanly():
    closed = []
    events = []
    assert drive(_counting(3, closed), events.append) == "done"
    assert [e.done for e in events] == [1, 2, 3] and events[-1].fraction == 1.0
    closed.clear()
    with pytest.raises(Cancelled):
        drive(_counting(10, closed), lambda p: p.done < 2)
    assert closed == [True]  # the generator's finally ran: last good state restored
