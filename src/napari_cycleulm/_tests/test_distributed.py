"""Blocks anywhere: mergeable accumulators, pure block functions and a dask cluster (issues 12, 13)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_cycleulm.render.e2e import E2EAccumulator, window_starts
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.io import frame_range, read_stack, write_stack
from napari_cycleulm.pipeline import RunPlan, process_block, run_pipeline
from napari_cycleulm.render import PowerDopplerAccumulator, SRRenderer
from napari_cycleulm.simulate import simulate
from napari_cycleulm.io.tables import Localisations, Tracks

distributed = pytest.importorskip("distributed")


# -- mergeable accumulators ----------------------------------------------------------------
def _random_tracks(rng, n, shape):
    frames = np.tile(np.arange(6), n)
    tid = np.repeat(np.arange(n), 6)
    y0 = rng.uniform(2, shape[0] - 8, n).repeat(6) + frames * 0.7
    x0 = rng.uniform(2, shape[1] - 8, n).repeat(6) + frames * 0.4
    return Tracks({"track_id": tid, "frame": frames, "y": y0, "x": x0})


def test_sr_renderer_merge_equals_one_renderer_given_both_inputs():
    rng = np.random.default_rng(0)
    shape = (24, 30)
    t1, t2 = _random_tracks(rng, 5, shape), _random_tracks(rng, 7, shape)
    l1 = Localisations({"frame": np.arange(9), "y": rng.uniform(0, 23, 9), "x": rng.uniform(0, 29, 9)})
    l2 = Localisations({"frame": np.arange(4), "y": rng.uniform(0, 23, 4), "x": rng.uniform(0, 29, 4)})
    one = SRRenderer(shape, upsampling=3)
    for t in (t1, t2):
        one.add_tracks(t)
    for lo in (l1, l2):
        one.add_localisations(lo)
    a, b = SRRenderer(shape, upsampling=3), SRRenderer(shape, upsampling=3)
    a.add_tracks(t1), a.add_localisations(l1)
    b.add_tracks(t2), b.add_localisations(l2)
    merged = a.merge(b).result()
    ref = one.result()
    assert merged.density.sum() > 0 and merged.count.sum() == 13
    for name in ("density", "count", "velocity", "axial_velocity", "direction"):
        np.testing.assert_allclose(getattr(merged, name), getattr(ref, name), rtol=1e-12, equal_nan=True)
    with pytest.raises(CycleULMError, match="different grids"):
        a.merge(SRRenderer(shape, upsampling=4))


def test_power_doppler_merge_equals_one_accumulator():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 8, 9)), rng.normal(size=(3, 8, 9))
    one = PowerDopplerAccumulator()
    one.add(x), one.add(y)
    a, b = PowerDopplerAccumulator(), PowerDopplerAccumulator()
    a.add(x), b.add(y)
    np.testing.assert_allclose(a.merge(b).result(), one.result(), rtol=1e-6)
    assert a.n_frames == 8
    assert PowerDopplerAccumulator().merge(b).n_frames == 3
    with pytest.raises(CycleULMError, match="merge"):
        a.merge(SRRenderer((8, 9)))


def test_window_starts_are_those_the_streaming_accumulator_processes(tiny_mbtnet):
    rng = np.random.default_rng(2)
    for n, stride in ((21, None), (16, None), (5, None), (19, 3)):
        frames = rng.random((n, 12, 14)).astype(np.float32)
        streamed = E2EAccumulator((12, 14), stride=stride, prob_threshold=None)
        for a in range(0, n, 7):  # blocks that cut windows
            streamed.add(frames[a:a + 7], tiny_mbtnet)
        ref = streamed.result()
        L = streamed.window
        starts = window_starts(n, L, stride)
        assert len(starts) == streamed.n_windows
        # Each window in its own accumulator, merged: the same maps.
        merged = E2EAccumulator((12, 14), stride=stride, prob_threshold=None)
        for s in starts:
            part = E2EAccumulator((12, 14), stride=stride, prob_threshold=None)
            w = np.zeros((1, L, 12, 14), np.float32)
            chunk = frames[s:s + L]
            w[0, :len(chunk)] = chunk
            part.add_windows(w, tiny_mbtnet)
            merged.merge(part.to_cpu())
        got = merged.result()
        assert merged.n_windows == streamed.n_windows
        # One window per network call here, batches of 4 when streamed: float32 rounding only.
        np.testing.assert_allclose(got.density, ref.density, rtol=1e-5)
        np.testing.assert_allclose(got.velocity, ref.velocity, rtol=1e-4, atol=1e-6, equal_nan=True)


def test_e2e_merge_refuses_buffered_frames_and_other_grids(tiny_mbtnet):
    a = E2EAccumulator((12, 14))
    a.add(np.zeros((3, 12, 14), np.float32), tiny_mbtnet)  # fewer frames than a window: buffered
    with pytest.raises(CycleULMError, match="finish"):
        E2EAccumulator((12, 14)).merge(a)
    with pytest.raises(CycleULMError, match="different"):
        E2EAccumulator((12, 14)).merge(E2EAccumulator((12, 15)))


@pytest.fixture(scope="module")
def tiny_mbtnet(tmp_path_factory):
    from napari_cycleulm._tests._tiny_nets import tiny_checkpoints
    from napari_cycleulm.dl.models import load_model

    path = tiny_checkpoints(tmp_path_factory.mktemp("nets"))["mbtnet"]
    return load_model("mbtnet", path, "cpu")


# -- pure blocks ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    return simulate(seed=5, n_frames=60, height=40, width=48)


def _same(a, b):
    for t in ("localisations", "tracks"):
        ta, tb = getattr(a, t), getattr(b, t)
        assert len(ta) == len(tb)
        for c in ta.columns:
            np.testing.assert_array_equal(np.asarray(ta[c]), np.asarray(tb[c]), err_msg=f"{t}.{c}")
    for m in ("density", "count", "velocity", "axial_velocity", "direction"):
        np.testing.assert_array_equal(getattr(a.maps, m), getattr(b.maps, m), err_msg=m)
    np.testing.assert_array_equal(a.power_doppler, b.power_doppler)


def test_a_block_gives_the_same_result_alone_in_a_fresh_process(sim, tmp_path):
    """A pickled plan (as sent to a worker) re-opens the input and reproduces a block exactly."""
    path = tmp_path / "in.npy"
    np.save(path, sim.frames)
    stack = read_stack(path, lazy=True)
    captured = {}

    from napari_cycleulm.pipeline import runner

    real = runner.process_block

    def spy(plan, a, b):
        captured.setdefault("plan", plan)
        return real(plan, a, b)

    runner.process_block = spy
    try:
        run_pipeline(stack, "cycleulm-loc", "auto", block_size=20)
    finally:
        runner.process_block = real
    plan = captured["plan"]
    data = pickle.dumps(plan)
    assert len(data) < 1_000_000, "the plan carries the file's path, not its frames"
    here = process_block(plan, 20, 40)
    code = (
        "import pickle, sys, torch; torch.set_num_threads(torch.get_num_threads());"
        "from napari_cycleulm.pipeline import process_block;"
        f"plan = pickle.loads(open({str(tmp_path / 'plan.pkl')!r}, 'rb').read());"
        "r = process_block(plan, 20, 40);"
        f"open({str(tmp_path / 'r.pkl')!r}, 'wb').write(pickle.dumps(r))"
    )
    (tmp_path / "plan.pkl").write_bytes(data)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    there = pickle.loads((tmp_path / "r.pkl").read_bytes())
    assert len(here.localisations) > 0
    for c in here.localisations.columns:
        np.testing.assert_array_equal(np.asarray(here.localisations[c]), np.asarray(there.localisations[c]))


def test_a_plan_without_a_file_or_array_cannot_be_sent(sim):
    from napari_cycleulm.io import LazyStack

    arr = sim.frames
    lazy = LazyStack(arr.shape, arr.dtype, lambda a, b: arr[a:b])  # no reopen recipe
    client = _FakeClient()
    with pytest.raises(CycleULMError, match="cannot be sent to dask workers"):
        run_pipeline(lazy, "baseline1", "auto", block_size=20, client=client)


class _FakeClient:
    scheduler = None

    def scheduler_info(self):
        return {"workers": {}}


def test_frame_range_reads_lazily_and_reopens(sim, tmp_path):
    path = tmp_path / "in.npy"
    np.save(path, sim.frames)
    stack = read_stack(path, lazy=True)
    part = frame_range(stack, 10, 25)
    assert part.shape == (15, 40, 48)
    np.testing.assert_array_equal(np.asarray(part), sim.frames[10:25])
    np.testing.assert_array_equal(np.asarray(part.reopen()), sim.frames[10:25])
    with pytest.raises(CycleULMError, match="not inside"):
        frame_range(stack, 50, 70)


# -- dask cluster ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    from napari_cycleulm.pipeline.distributed import close_client, make_client

    c = make_client(workers=2)
    yield c
    close_client(c)


@pytest.fixture
def one_thread():
    """Workers run torch on one thread; so does the reference run (float results depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("pipeline", ["baseline1", "cycleulm-loc", "cycleulm-e2e", "cycleulm-tracks"])
def test_local_cluster_gives_the_single_process_result(sim, client, one_thread, pipeline):
    ref = run_pipeline(sim.frames, pipeline, "auto", block_size=16)
    got = run_pipeline(sim.frames, pipeline, "auto", block_size=16, client=client)
    assert got.params["dask"]["workers"] == 2
    if pipeline != "cycleulm-e2e":
        assert ref.n_localisations > 0
    else:
        assert ref.maps.density.sum() > 0
    _same(ref, got)


def test_a_worker_killed_mid_run_is_replaced_and_the_result_is_unchanged(sim, client, one_thread, tmp_path):
    path = tmp_path / "in.npy"
    np.save(path, sim.frames)
    ref = run_pipeline(read_stack(path, lazy=True), "baseline2", "auto", block_size=4)
    killed = []

    def kill_one(event):
        if killed or event.stage != "localise + track":
            return None
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy:
            try:  # the nanny restarts the worker; its blocks are computed again
                client.run(os._exit, 1, workers=busy[:1])
            except Exception:  # noqa: BLE001 - the dying worker closes the connection
                pass
            killed.append(busy[0])
        return None

    out = tmp_path / "run"
    got = run_pipeline(read_stack(path, lazy=True), "baseline2", "auto", block_size=4, client=client,
                       progress=kill_one, out_dir=out, keep_tables=True)
    assert killed, "no worker was busy when the first block came back"
    _same(ref, got)
    assert (out / "localisations.csv").exists()


def test_cli_runs_on_a_local_cluster_like_in_one_process(sim, tmp_path):
    path = tmp_path / "in.tif"
    write_stack(path, sim.frames)
    base = [sys.executable, "-m", "napari_cycleulm.cli", "run", str(path), "--pipeline", "baseline1",
            "--block-size", "16", "--frames", "50", "--quiet"]
    subprocess.run(base + ["--out", str(tmp_path / "one")], check=True, timeout=300)
    subprocess.run(base + ["--out", str(tmp_path / "two"), "--dask-workers", "2"], check=True, timeout=300)
    for f in ("localisations.csv", "tracks.csv"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    r = subprocess.run(base + ["--out", str(tmp_path / "bad"), "--dask-scheduler", "tcp://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "could not reach the dask scheduler" in r.stderr
    assert "Traceback" not in r.stderr
