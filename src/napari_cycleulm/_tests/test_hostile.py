"""The command line and the API under hostile input: nothing lost, nothing
overwritten, nothing half-written, never a traceback.

Each test names the class of problem it covers (issue 14): data lost or
mixed, crashes, misleading or silent behaviour, interruptions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_cycleulm.cli import main
from napari_cycleulm.errors import CycleULMError
from napari_cycleulm.psf import PSF


def tree(root: Path) -> dict:
    """Hash of every file (and the name of every folder) under ``root``."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def parts(root: Path) -> list[Path]:
    """Leftover temporary files or folders (``.part``) anywhere under ``root``."""
    return [p for p in Path(root).rglob("*") if ".part" in p.name]


def cli(argv, capsys):
    """Run the CLI in-process; return (exit status, stderr lines that are not warnings)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def one_error(rc, lines, *words):
    assert rc == 2, lines
    errors = [ln for ln in lines if "warning:" not in ln]
    assert len(errors) == 1 and "error:" in errors[0], lines
    for w in words:
        assert w.lower() in errors[0].lower(), (w, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory):
    """A small simulated stack (npy + tif), its ground truth, a PSF and a finished run."""
    from napari_cycleulm.pipeline import run_pipeline
    from napari_cycleulm.simulate import simulate

    root = tmp_path_factory.mktemp("hostile")
    sim = simulate(n_frames=20, height=40, width=48, density=4, seed=2)
    np.save(root / "frames.npy", sim.frames)
    tifffile.imwrite(root / "frames.tif", sim.frames)
    sim.ground_truth.to_csv(root / "gt.csv")
    PSF(1.3, 1.6).to_json(root / "psf.json")
    run_pipeline(sim.frames, "baseline1", PSF(1.3, 1.6), out_dir=root / "run", block_size=10,
                 pixel_size_um=50.0, frame_rate_hz=500.0)
    return root


@pytest.fixture
def work(stack_dir, tmp_path):
    """A private copy of the inputs (tests may try to destroy them)."""
    for p in stack_dir.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp_path / p.name)
    return tmp_path


# -- data lost or mixed -------------------------------------------------------
def test_an_output_that_is_an_input_is_refused(work, capsys):
    before = tree(work)
    os.symlink(work / "frames.tif", work / "link.json")  # same file under a JSON name
    before = tree(work)
    cases = [
        (["translate", work / "frames.tif", "--out", work / "frames.tif"], "input"),
        (["psf", work / "frames.tif", "--out", work / "frames.tif"], ".json"),
        (["psf", work / "frames.tif", "--out", work / "link.json", "--overwrite"], "input"),
        (["evaluate", work / "gt.csv", work / "run" / "localisations.csv", "--out", work / "gt.csv"], ".json"),
        (["run", work / "run" / "sr_density.tif", "--pipeline", "baseline1", "--out", work / "run",
          "--overwrite"], "contains the input"),
        (["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work, "--overwrite"],
         "contains the input"),
        (["train", "mbdt", work / "frames.npy", "--out", work / "frames.npy", "--overwrite"], "input"),
        (["export", work / "run", "--out", work / "run", "--overwrite"], "overwrite"),
    ]
    for argv, word in cases:
        one_error(*cli(argv, capsys), word)
    assert tree(work) == before
    assert not parts(work)


def test_api_refuses_to_replace_a_folder_holding_its_input(work):
    from napari_cycleulm.io import read_stack
    from napari_cycleulm.pipeline import run_pipeline

    stack = read_stack(work / "run" / "sr_density.tif", lazy=True)
    with pytest.raises(CycleULMError, match="contains the input"):
        run_pipeline(stack, "baseline1", PSF(1.3, 1.6), out_dir=work / "run")
    (work / "notes").mkdir()
    (work / "notes" / "mine.txt").write_text("x")
    with pytest.raises(CycleULMError, match="not a folder written by"):
        run_pipeline(np.load(work / "frames.npy"), "baseline1", PSF(1.3, 1.6), out_dir=work / "notes")
    assert (work / "notes" / "mine.txt").read_text() == "x"


def test_a_run_into_an_existing_run_folder_never_mixes(work, capsys, tmp_path_factory):
    from ._tiny_nets import tiny_checkpoints

    nets = tiny_checkpoints(tmp_path_factory.mktemp("nets"))
    before = tree(work / "run")
    e2e = ["run", work / "frames.npy", "--pipeline", "cycleulm-e2e", "--out", work / "run", "--psf",
           work / "psf.json", "--mbdt", nets["mbdt"], "--mbtnet", nets["mbtnet"], "--quiet", "--device", "cpu"]
    one_error(*cli(e2e, capsys), "--overwrite")
    assert tree(work / "run") == before
    rc, lines = cli([*e2e, "--overwrite"], capsys)
    assert rc == 0, lines
    names = {p.name for p in (work / "run").iterdir()}
    # Baseline 1's tables are gone with the rest of the old run: E2E makes none.
    assert "localisations.csv" not in names and "tracks.csv" not in names
    assert {"sr_density.tif", "run.json"} <= names
    assert not parts(work)


def test_a_failed_run_leaves_the_previous_run_exactly(work):
    from napari_cycleulm.pipeline import run_pipeline

    before = tree(work / "run")
    frames = np.load(work / "frames.npy")
    frames[15] = np.nan  # fails in the second block, after the first was written
    with pytest.raises(CycleULMError):
        run_pipeline(frames, "baseline1", PSF(1.3, 1.6), out_dir=work / "run", block_size=10)
    assert tree(work / "run") == before
    assert not parts(work)


def test_simulate_into_an_existing_folder_needs_overwrite(tmp_path, capsys):
    sim = ["simulate", tmp_path / "sim", "--frames", "3", "--height", "24", "--width", "24"]
    assert cli(sim, capsys)[0] == 0
    before = tree(tmp_path / "sim")
    one_error(*cli(sim, capsys), "--overwrite")
    assert tree(tmp_path / "sim") == before
    (tmp_path / "sim" / "extra.txt").write_text("old")
    assert cli([*sim, "--overwrite", "--seed", "4"], capsys)[0] == 0
    assert not (tmp_path / "sim" / "extra.txt").exists()  # replaced as a whole
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    one_error(*cli(["simulate", tmp_path / "mine", "--overwrite", "--frames", "3"], capsys), "not a folder")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_a_failed_export_leaves_nothing_half_written(work, capsys, monkeypatch):
    from napari_cycleulm import export

    out = work / "fig"
    for bad in (["--colormap", "nope"], ["--gamma", "0"], ["--gamma", "-1"], ["--scale-bar-mm", "1e9"]):
        one_error(*cli(["export", work / "run", "--out", out, *bad], capsys))
        assert not out.exists()
    assert cli(["export", work / "run", "--out", out], capsys)[0] == 0
    before = tree(out)
    one_error(*cli(["export", work / "run", "--out", out], capsys), "--overwrite")
    # A failure after some files were made: the previous export stays exactly.
    real = export.write_png
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) > 2:
            raise CycleULMError("simulated failure")
        return real(*a, **k)

    monkeypatch.setattr(export, "write_png", failing)
    one_error(*cli(["export", work / "run", "--out", out, "--overwrite"], capsys), "simulated")
    assert tree(out) == before and not parts(work)


def test_export_overwrite_removes_the_old_exports_files(work, capsys):
    out = work / "fig"
    assert cli(["export", work / "run", "--out", out], capsys)[0] == 0
    assert (out / "sr_density.tif").is_file()
    assert cli(["export", work / "run", "--out", out, "--csv", "--overwrite"], capsys)[0] == 0
    names = {p.name for p in out.iterdir()}
    assert "sr_density.tif" not in names and "localisations.csv" in names and "export.json" in names


# -- crashes: sizes, unreadable inputs, unwritable outputs ----------------------
def test_sizes_that_cannot_fit_are_refused_with_an_estimate(work, capsys):
    huge = work / "huge.npy"
    with open(huge, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (100000, 10000, 10000)})
        fh.write(b"\0" * 1000)
    run = ["run", "--pipeline", "baseline1", "--quiet", "--psf", work / "psf.json"]
    one_error(*cli([*run[:1], huge, *run[1:], "--out", work / "o"], capsys), "truncated", "huge.npy")
    one_error(*cli([*run[:1], work / "frames.npy", *run[1:], "--out", work / "o", "--upsampling", "100000"],
                   capsys), "need about", "upsampling")
    (work / "wide.json").write_text('{"sigma_y_px": 1e6, "sigma_x_px": 1}')
    one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "o", "--psf",
                    work / "wide.json"], capsys), "sigma_y_px")
    (work / "wide.json").write_text('{"sigma_y_px": 40, "sigma_x_px": 1}')
    one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "o", "--psf",
                    work / "wide.json"], capsys), "larger than the frames")
    one_error(*cli(["simulate", work / "o", "--frames", "100000", "--height", "10000", "--width", "10000"],
                   capsys), "need about")
    one_error(*cli(["export", work / "run", "--out", work / "o", "--scale-bar-mm", "1e9"], capsys),
              "longer than the image")
    assert not (work / "o").exists()


@pytest.mark.parametrize("name,content,words", [
    ("empty.tif", b"", ["empty.tif", "TIFF"]),
    ("png.tif", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, ["png.tif"]),
    ("strings.npy", None, ["strings.npy", "non-numeric"]),
    ("folder.tif", "dir", ["is a directory"]),
])
def test_unreadable_inputs_are_one_line(work, capsys, name, content, words):
    p = work / name
    if content == "dir":
        p.mkdir()
    elif content is None:
        np.save(p, np.array([["a", "b"]]))
    else:
        p.write_bytes(content)
    for argv in (["run", p, "--pipeline", "baseline1", "--out", work / "o"],
                 ["psf", p, "--out", work / "p.json"],
                 ["translate", p, "--out", work / "m.tif"]):
        one_error(*cli(argv, capsys), *words)
    assert not (work / "o").exists()


def test_truncated_tiff_is_one_line(work, capsys):
    data = (work / "frames.tif").read_bytes()
    (work / "cut.tif").write_bytes(data[: len(data) // 2])
    one_error(*cli(["run", work / "cut.tif", "--pipeline", "baseline1", "--out", work / "o", "--psf",
                    work / "psf.json", "--quiet"], capsys), "cut.tif")
    assert not (work / "o").exists() and not parts(work)


def test_non_utf8_csv_names_the_file(work, capsys):
    (work / "latin.csv").write_bytes("frame,y,x\n1,2,3\n# café\n".encode("latin-1"))
    one_error(*cli(["evaluate", work / "gt.csv", work / "latin.csv", "--out", work / "e.json"], capsys),
              "latin.csv", "UTF-8")


def test_unwritable_or_wrong_outputs_are_refused_before_work(work, capsys, monkeypatch):
    from napari_cycleulm import train

    (work / "adir.pt").mkdir()
    (work / "adir.tif").mkdir()
    monkeypatch.setattr(train, "iter_train_mbdt", lambda *a, **k: pytest.fail("trained before checking"))
    one_error(*cli(["train", "mbdt", work / "frames.npy", "--out", work / "adir.pt"], capsys), "directory")
    one_error(*cli(["translate", work / "frames.npy", "--out", work / "adir.tif"], capsys), "directory")
    one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "gt.csv"], capsys),
              "is a file")
    one_error(*cli(["train", "mbdt", work / "frames.npy", "--out", work / "m.pt", "--device", "bogus"], capsys),
              "--device")
    one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "o", "--device",
                    "bogus"], capsys), "--device")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root writes anywhere
        ro = work / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            one_error(*cli(["translate", work / "frames.npy", "--out", ro / "m.tif"], capsys), "permission")
            one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", ro / "r"], capsys),
                      "permission")
        finally:
            ro.chmod(0o755)


def test_internal_errors_are_one_line_with_a_debug_hint(work, capsys, monkeypatch):
    from napari_cycleulm import cli as cli_module

    def boom(args):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli_module, "cmd_evaluate", boom)
    argv = ["evaluate", work / "gt.csv", work / "gt.csv"]
    rc, lines = cli(argv, capsys)
    assert rc == 1 and len(lines) == 1 and "--debug" in lines[0] and "RuntimeError" in lines[0]
    rc, lines = cli(["--debug", *argv], capsys)
    assert rc == 1 and any("Traceback" in ln for ln in lines)
    rc, lines = cli([*argv, "--debug"], capsys)  # also accepted after the sub-command
    assert rc == 1 and any("Traceback" in ln for ln in lines)


def test_usage_errors_are_one_line(capsys):
    rc, lines = cli(["run", "x.tif", "--pipeline", "baseline1", "--out", "o", "--upsampling", "x"], capsys)
    assert rc == 2 and len(lines) == 1 and "--upsampling" in lines[0]


# -- misleading or silent -------------------------------------------------------
def test_a_negative_fwhm_is_reported_as_fwhm(work, capsys):
    (work / "neg.json").write_text('{"fwhm_y_px": -2.0, "fwhm_x_px": 3.0}')
    one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "o", "--psf",
                    work / "neg.json"], capsys), "fwhm_y_px")


def test_a_tiny_psf_is_refused(work, capsys):
    (work / "tiny.json").write_text('{"sigma_y_px": 0.001, "sigma_x_px": 1.0}')
    one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "o", "--psf",
                    work / "tiny.json"], capsys), "narrower than a pixel")
    from napari_cycleulm.pipeline import run_pipeline

    with pytest.raises(CycleULMError, match="narrower than a pixel"):
        run_pipeline(np.load(work / "frames.npy"), "baseline1", PSF(0.001, 1.0))


def test_mat_files_take_variable(work, capsys):
    import json

    import scipy.io

    frames = np.load(work / "frames.npy")
    scipy.io.savemat(work / "flat.mat", {"image": frames[0]})
    one_error(*cli(["run", work / "flat.mat", "--pipeline", "baseline1", "--out", work / "o"], capsys),
              "--variable")
    scipy.io.savemat(work / "two.mat", {"a": np.moveaxis(frames, 0, 2), "b": np.moveaxis(frames[:5], 0, 2)})
    rc, lines = cli(["run", work / "two.mat", "--variable", "b", "--pipeline", "baseline1", "--out",
                     work / "o", "--psf", work / "psf.json", "--quiet"], capsys)
    assert rc == 0, lines
    assert json.loads((work / "o" / "run.json").read_text())["n_frames"] == 5


def test_corrupt_metadata_is_a_one_line_warning(work, capsys):
    (work / "metadata.json").write_text("{not json")
    rc, lines = cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "o", "--psf",
                     work / "psf.json", "--quiet"], capsys)
    assert rc == 0
    warns = [ln for ln in lines if "warning:" in ln and "metadata.json" in ln]
    assert len(warns) == 1 and "--pixel-size-um" in warns[0]


def test_negative_frame_numbers_are_refused(work, capsys):
    (work / "neg.csv").write_text("frame,y,x\n0,5,5\n-3,6,6\n")
    one_error(*cli(["evaluate", work / "gt.csv", work / "neg.csv", "--out", work / "e.json"], capsys),
              "neg.csv", ">= 0")


def test_refused_runs_leave_no_output_folder(work, capsys):
    for extra in (["--psf", work / "missing.json"], ["--block-size", "0"], ["--upsampling", "0"],
                  ["--psf", work / "gt.csv"], ["--pixel-size-um", "-1"]):
        one_error(*cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / "new" / "o",
                        *extra], capsys))
        assert not (work / "new").exists(), extra


# -- interruptions: SIGINT / SIGTERM in a separate process -------------------------
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _spawn(argv, log: Path, ignore_sigint: bool = False):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")

    def pre():
        if ignore_sigint:  # what a shell does to background jobs
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "napari_cycleulm.cli", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, preexec_fn=pre)


def _wait_for(cond, proc, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _interrupt(proc, sig, log):
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    lines = [ln for ln in log.read_text().replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    return rc, lines


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_the_previous_run(work, sig):
    frames = np.load(work / "frames.npy")
    np.save(work / "long.npy", np.tile(frames, (40, 1, 1)))  # 800 frames: many seconds of work
    before = tree(work / "run")
    log = work / "log.txt"
    proc = _spawn(["run", work / "long.npy", "--pipeline", "baseline2", "--out", work / "run", "--psf",
                   work / "psf.json", "--block-size", "10", "--overwrite", "--quiet"], log,
                  ignore_sigint=sig == signal.SIGINT)
    assert _wait_for(lambda: parts(work), proc), log.read_text()  # the staging folder: work has begun
    time.sleep(0.3)
    rc, lines = _interrupt(proc, sig, log)
    assert rc == (130 if sig == signal.SIGINT else 143), lines
    assert tree(work / "run") == before
    assert not parts(work)
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0]), lines


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_leaves_a_complete_checkpoint_or_none(work, sig):
    from napari_cycleulm.dl.checkpoint import load_checkpoint

    log = work / "log.txt"
    out = work / "m.pt"
    before = tree(work)
    proc = _spawn(["train", "mblnet", "--sigma-range", "0.8", "1.5", "--steps", "100000", "--out", out,
                   "--device", "cpu"], log)
    assert _wait_for(lambda: "train mblnet" in log.read_text(), proc), log.read_text()
    time.sleep(0.5)
    rc, lines = _interrupt(proc, sig, log)
    assert rc == (130 if sig == signal.SIGINT else 143), lines
    if out.exists():
        assert load_checkpoint(out).kind == "mblnet"
    after = tree(work)
    after.pop("m.pt", None)
    after.pop("log.txt", None)
    before.pop("log.txt", None)
    assert after == before and not parts(work)


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_export_leaves_the_previous_export(work, sig):
    big = work / "big"
    big.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        tifffile.imwrite(big / f"sr_map{i}.tif", rng.random((1500, 1500), dtype=np.float32))
    out = work / "fig"
    shutil.copy2(big / "sr_map0.tif", work / "small.tif")
    assert main(["export", str(work / "run"), "--out", str(out)]) == 0
    before = tree(out)
    log = work / "log.txt"
    proc = _spawn(["export", big, "--out", out, "--overwrite", "--png", "--tiff", "--pixel-size-um", "50",
                   "--upsampling", "4"], log)
    assert _wait_for(lambda: any(parts(work)) and any(parts(work)[0].rglob("*.png")), proc), log.read_text()
    rc, lines = _interrupt(proc, sig, log)
    assert rc == (130 if sig == signal.SIGINT else 143), lines
    assert tree(out) == before and not parts(work)


def test_absurd_pixel_sizes_do_not_crash_the_preview(work, capsys):
    # A 1 mm preview scale bar on a 1e-6 um pixel would be 1e9 px long: left out.
    for px in ("1e-6", "1e9"):
        rc, lines = cli(["run", work / "frames.npy", "--pipeline", "baseline1", "--out", work / f"o{px}",
                         "--psf", work / "psf.json", "--pixel-size-um", px, "--frame-rate-hz", "500",
                         "--quiet"], capsys)
        assert rc == 0, lines
        assert (work / f"o{px}" / "preview.png").is_file()
