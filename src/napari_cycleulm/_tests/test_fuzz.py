"""Property-based fuzzing of everything that reads user files or options.

The specification, for any input: the library either returns a valid result
or raises :class:`~napari_cycleulm.errors.CycleULMError` with a message (no
other exception type); the command line exits with 0 or 2 and one error line
(never 1, an internal error), and changes no file outside its ``--out``.

Example counts are fixed (``FUZZ_EXAMPLES``) so that every test run, CI
included, exercises the same number of cases: see ``test_fuzz_case_count``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cycleulm.cli import main
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.io import read_stack, read_table
from napari_cycleulm.psf import MAX_SIGMA_PX, PSF
from napari_cycleulm.io.tables import Localisations, Tracks

#: Examples per fuzz test (the total per run is their sum, see test_fuzz_case_count).
FUZZ_EXAMPLES = {
    "stack_files": 150,
    "psf_json": 150,
    "csv_tables": 150,
    "evaluate_options": 40,
    "export_options": 40,
    "run_options": 25,
    "simulate_options": 25,
}

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # capsys is read per example


def fuzz(name: str):
    return settings(FUZZ, max_examples=FUZZ_EXAMPLES[name])


def test_fuzz_case_count():
    """Documented in docs/cli.md: the number of fuzz cases each test run exercises."""
    assert sum(FUZZ_EXAMPLES.values()) == 580


def snapshot(root: Path, skip: Path | None = None) -> dict:
    """Content hash of every file under ``root`` (outside ``skip``)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- stack readers ------------------------------------------------------------
DTYPES = ["float32", "float64", "float16", "uint8", "int16", "int64", "bool", "complex64", "<U3"]


def _write_stack_file(path: Path, fmt: str, arr: np.ndarray) -> None:
    import h5py
    import scipy.io
    import tifffile

    if fmt == ".tif":
        tifffile.imwrite(path, arr)
    elif fmt == ".npy":
        with open(path, "wb") as fh:
            np.save(fh, arr)
    elif fmt == ".mat":
        scipy.io.savemat(path, {"v": arr})
    else:
        with h5py.File(path, "w") as f:
            f["v"] = arr


@st.composite
def stack_files(draw):
    fmt = draw(st.sampled_from([".tif", ".npy", ".mat", ".h5"]))
    label = draw(st.sampled_from([fmt, fmt, fmt, ".tif", ".npy", ".mat", ".h5", ".hdf5", ".csv", ".png"]))
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from(["random", "nan", "inf", "zeros"]))
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "empty", "garbage"]))
    cut = draw(st.floats(0, 1))
    seed = draw(st.integers(0, 2**16))
    lazy = draw(st.booleans())
    return fmt, label, shape, dtype, fill, damage, cut, seed, lazy


def _make_array(shape, dtype, fill, rng):
    if dtype == "<U3":
        return np.full(shape, "ab", dtype=dtype)
    a = rng.normal(size=shape) * 100
    if fill == "nan" and a.size:
        a.flat[rng.integers(a.size)] = np.nan
    elif fill == "inf" and a.size:
        a.flat[rng.integers(a.size)] = np.inf
    elif fill == "zeros":
        a[...] = 0
    with np.errstate(invalid="ignore", over="ignore"):
        return a.astype(dtype)


@fuzz("stack_files")
@given(stack_files())
def test_stack_readers_fail_cleanly(case):
    fmt, label, shape, dtype, fill, damage, cut, seed, lazy = case
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d, quiet():
        path = Path(d) / f"stack{label}"
        try:
            _write_stack_file(path, fmt, _make_array(shape, dtype, fill, rng))
        except Exception:  # noqa: BLE001 - a writer refusing a dtype: fuzz raw bytes instead
            path.write_bytes(rng.bytes(64))
        data = path.read_bytes()
        if damage == "truncate":
            data = data[: int(len(data) * cut)]
        elif damage == "flip" and data:
            pos = rng.integers(0, len(data), size=max(1, len(data) // 50))
            buf = bytearray(data)
            for p in pos:
                buf[p] ^= 0xFF
            data = bytes(buf)
        elif damage == "empty":
            data = b""
        elif damage == "garbage":
            data = rng.bytes(int(cut * 400))
        path.write_bytes(data)
        before = snapshot(Path(d))
        try:
            stack = read_stack(path, lazy=lazy)
            arr = np.asarray(stack)
        except CycleULMError as exc:
            assert str(exc).strip()
        else:
            assert arr.ndim == 3 and min(arr.shape) >= 1, arr.shape
            assert np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
        finally:
            if "stack" in locals() and hasattr(stack, "close"):
                stack.close()
        assert snapshot(Path(d)) == before


# -- PSF JSON -----------------------------------------------------------------
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12), st.none(),
    st.booleans(), st.text(max_size=5), st.lists(st.floats(-2, 2), max_size=3),
    st.lists(st.lists(st.floats(allow_nan=True), min_size=1, max_size=3), max_size=3),
)
PSF_KEYS = ["sigma_y_px", "sigma_x_px", "fwhm_y_px", "fwhm_x_px", "theta_rad", "pixel_size_um",
            "n_bubbles", "residual", "mbonly_factor", "measured", "version"]


@st.composite
def psf_documents(draw):
    kind = draw(st.sampled_from(["dict", "dict", "dict", "raw", "json-other"]))
    if kind == "raw":
        return draw(st.binary(max_size=60))
    if kind == "json-other":
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=5),
                                         st.floats(allow_nan=False)))).encode()
    keys = draw(st.lists(st.sampled_from(PSF_KEYS), unique=True, max_size=8))
    d = {k: draw(VALUES) for k in keys}
    if draw(st.booleans()):  # often a plausible core, so the deeper checks are reached
        d.setdefault("sigma_y_px", draw(st.floats(-5, 2000)))
        d.setdefault("sigma_x_px", draw(st.floats(1e-6, 5)))
    text = json.dumps(d, allow_nan=True)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode()


@fuzz("psf_json")
@given(psf_documents())
def test_psf_json_fails_cleanly(doc):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "psf.json"
        path.write_bytes(doc)
        try:
            psf = PSF.from_json(path)
        except CycleULMError as exc:
            assert str(exc).strip()
        else:
            for s in (psf.sigma_y_px, psf.sigma_x_px):
                assert np.isfinite(s) and 0 < s <= MAX_SIGMA_PX
            assert np.isfinite(psf.fwhm_y_px) and psf.kernel.ndim == 2


# -- CSV tables ---------------------------------------------------------------
CELLS = st.one_of(
    st.integers(-5, 50).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-1", "1e400", "abc", "1,5", '"2"', "\x00", "é", " 3 "]),
)
COLUMNS = ["frame", "y", "x", "track_id", "score", "intensity", "axis-0", "axis-1", "axis-2", "Frame", "",
           "é", "vy"]


@st.composite
def csv_documents(draw):
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=6))
    n_rows = draw(st.integers(0, 6))
    rows = [[draw(CELLS) for _ in range(draw(st.integers(0, len(header) + 1)))] for _ in range(n_rows)]
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data, draw(st.sampled_from([".csv", ".CSV", ".txt"]))


@fuzz("csv_tables")
@given(csv_documents())
def test_csv_tables_fail_cleanly(doc):
    data, ext = doc
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"table{ext}"
        path.write_bytes(data)
        for reader in (read_table, Localisations.from_csv, Tracks.from_csv):
            try:
                table = reader(path)
            except CycleULMError as exc:
                assert str(exc).strip()
            else:
                assert (table["frame"] >= 0).all()
                assert np.isfinite(table["y"]).all() and np.isfinite(table["x"]).all()


# -- command-line options -----------------------------------------------------
NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "0.5", "nan", "inf", "-inf", "1e9", "1e-9", "abc", "", "1e400"]),
    st.floats(-1e3, 1e3, allow_nan=False).map(repr), st.integers(-10, 10**7).map(str),
)


def _run_cli(argv, capsys):
    with quiet():
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse: usage errors
            rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def _check_cli(rc, err):
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip() and "warning:" not in ln]
        assert len(lines) == 1, err
        assert "error:" in lines[0]


@pytest.fixture(scope="module")
def fuzz_inputs(tmp_path_factory):
    """A tiny run folder, tables and a stack to point the options at."""
    from napari_cycleulm.pipeline import run_pipeline
    from napari_cycleulm.simulate import simulate

    root = tmp_path_factory.mktemp("fuzz_inputs")
    sim = simulate(n_frames=12, height=32, width=40, density=4, seed=3)
    np.save(root / "frames.npy", sim.frames)
    sim.ground_truth.to_csv(root / "gt.csv")
    psf = PSF(1.2, 1.5)
    psf.to_json(root / "psf.json")
    with quiet():
        run_pipeline(sim.frames, "baseline1", psf, out_dir=root / "run", pixel_size_um=50.0,
                     frame_rate_hz=500.0, block_size=6)
    return root


@fuzz("evaluate_options")
@given(tol=NUMBERS, px=st.one_of(st.none(), NUMBERS), sweep=st.booleans(), plot=st.booleans(),
       out=st.sampled_from(["new", "gt", "det", "dir", "txt"]))
def test_evaluate_options(fuzz_inputs, capsys, tol, px, sweep, plot, out):
    root = fuzz_inputs
    with tempfile.TemporaryDirectory(dir=root) as d:
        target = {"new": Path(d) / "e.json", "gt": root / "gt.csv", "det": root / "run" / "localisations.csv",
                  "dir": Path(d), "txt": Path(d) / "e.txt"}[out]
        argv = ["evaluate", str(root / "gt.csv"), str(root / "run" / "localisations.csv"),
                "--tolerance", tol, "--out", str(target)]
        argv += [] if px is None else ["--pixel-size-um", px]
        argv += ["--sweep"] if sweep else []
        argv += ["--plot", str(Path(d) / "pr.png")] if plot else []
        before = snapshot(root, skip=Path(d))
        rc, err = _run_cli(argv, capsys)
        _check_cli(rc, err)
        assert snapshot(root, skip=Path(d)) == before


@fuzz("export_options")
@given(gamma=st.one_of(st.none(), NUMBERS), bar=st.one_of(st.none(), NUMBERS),
       cmap=st.one_of(st.none(), st.sampled_from(["hot", "nope", "", "turbo", "gray_r"])),
       up=st.one_of(st.none(), NUMBERS), px=st.one_of(st.none(), NUMBERS),
       fmt=st.sets(st.sampled_from(["--tiff", "--png", "--csv"])), physical=st.booleans(),
       out=st.sampled_from(["new", "new", "run", "file"]))
def test_export_options(fuzz_inputs, capsys, gamma, bar, cmap, up, px, fmt, physical, out):
    root = fuzz_inputs
    with tempfile.TemporaryDirectory(dir=root) as d:
        target = {"new": Path(d) / "fig", "run": root / "run", "file": root / "gt.csv"}[out]
        argv = ["export", str(root / "run"), "--out", str(target), *sorted(fmt)]
        for opt, v in (("--gamma", gamma), ("--scale-bar-mm", bar), ("--colormap", cmap),
                       ("--upsampling", up), ("--pixel-size-um", px)):
            if v is not None:
                argv += [opt, v]
        argv += ["--physical-units"] if physical else []
        before = snapshot(root, skip=Path(d))
        rc, err = _run_cli(argv, capsys)
        _check_cli(rc, err)
        after = snapshot(root, skip=Path(d))
        if out == "run":  # exporting beside the run may only add files (PNGs), never change one
            assert all(after[k] == v for k, v in before.items())
        else:
            assert after == before
        assert not list(root.rglob("*.part"))


SMALL = st.sampled_from(["1", "5", "100", "0", "-2", "x", "nan", "1e9"])


@fuzz("run_options")
@given(block=st.one_of(st.none(), SMALL), up=st.sampled_from(["1", "2", "2", "0", "-3", "100000", "x"]),
       thr=st.one_of(st.none(), st.none(), NUMBERS), target=st.one_of(st.none(), st.none(), SMALL),
       maxd=st.one_of(st.none(), st.none(), NUMBERS),
       device=st.one_of(st.none(), st.sampled_from(["cpu", "bogus", "cuda:x"])),
       pipeline=st.sampled_from(["baseline1", "baseline2", "baseline1", "nope"]),
       psf=st.sampled_from(["psf.json", "psf.json", "auto", "gt.csv", "missing.json"]),
       out=st.sampled_from(["new", "new", "old-run", "input-folder", "input-file"]), overwrite=st.booleans())
def test_run_options(fuzz_inputs, capsys, block, up, thr, target, maxd, device, pipeline, psf, out, overwrite):
    import shutil

    root = fuzz_inputs
    with tempfile.TemporaryDirectory(dir=root) as d:
        target_dir = {"new": Path(d) / "r", "old-run": Path(d) / "old", "input-folder": root,
                      "input-file": root / "frames.npy"}[out]
        if out == "old-run":
            shutil.copytree(root / "run", target_dir)
            (target_dir / "mine.csv").write_text("frame,y,x\n")  # any file in a run folder
        old = snapshot(target_dir) if out == "old-run" else None
        argv = ["run", str(root / "frames.npy"), "--pipeline", pipeline, "--out", str(target_dir),
                "--psf", psf if psf == "auto" else str(root / psf), "--upsampling", up, "--quiet"]
        for opt, v in (("--block-size", block), ("--threshold", thr), ("--target-count", target),
                       ("--max-distance", maxd), ("--device", device)):
            if v is not None:
                argv += [opt, v]
        argv += ["--overwrite"] if overwrite else []
        before = snapshot(root, skip=Path(d))
        rc, err = _run_cli(argv, capsys)
        _check_cli(rc, err)
        assert snapshot(root, skip=Path(d)) == before
        assert not [p for p in root.rglob("*") if p.name.endswith(".part")]
        if out == "old-run":
            if rc == 0:  # replaced as a whole: nothing of the old run is left
                assert overwrite and not (target_dir / "mine.csv").exists()
                assert (target_dir / "run.json").is_file()
            else:  # refused or failed: the old run exactly as it was
                assert snapshot(target_dir) == old
        if out == "new" and rc != 0:
            assert not target_dir.exists()


@fuzz("simulate_options")
@given(frames=NUMBERS,
       size=st.sampled_from([("16", "16"), ("24", "32"), ("8", "16"), ("0", "16"), ("-1", "16"),
                             ("1000000", "1000000"), ("x", "16"), ("16", "15")]),
       density=st.one_of(st.none(), NUMBERS), exists=st.booleans())
def test_simulate_options(tmp_path_factory, capsys, frames, size, density, exists):
    root = tmp_path_factory.getbasetemp()
    h, w = size
    try:
        if int(frames) > 3 and h != "1000000":
            frames = "3"  # keep the accepted ones tiny: the point is the refusals
    except ValueError:
        pass
    with tempfile.TemporaryDirectory(dir=root) as d:
        out = Path(d) / "sim"
        if exists:
            out.mkdir()
            (out / "mine.txt").write_text("keep me")
        argv = ["simulate", str(out), "--frames", frames, "--height", h, "--width", w]
        argv += [] if density is None else ["--density", density]
        rc, err = _run_cli(argv, capsys)
        _check_cli(rc, err)
        if exists:  # not a simulation folder: refused, even though it exists
            assert rc == 2 and (out / "mine.txt").read_text() == "keep me"
        if rc != 0:
            assert not out.exists() or exists
        assert not [p for p in Path(d).rglob("*") if p.name.endswith(".part")]
