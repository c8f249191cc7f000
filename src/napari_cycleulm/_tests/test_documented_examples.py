"""Every code example in the README and docs/ runs (Python) or parses (command lines) as written.

Python blocks (```python) are executed in a fresh namespace inside a
temporary folder; a block whose first line is ``# not run here: <why>`` (e.g. it
submits batch jobs) is only compiled and its ``napari_cycleulm`` imports resolved.  Command lines (```bash) are checked against the real
parsers: ``cycleulm ...`` with the CLI's own ``build_parser``, and
``python benchmarks|scripts/X.py ...`` against that script's ``--help``, so
a renamed sub-command or option in the code fails here before a reader
finds it.  Blocks of other languages (```text) show data, not commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)


def _blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        if not path.is_file():
            continue
        for i, m in enumerate(BLOCK.finditer(path.read_text(encoding="utf-8"))):
            if m.group(1) == language:
                found.append((f"{path.relative_to(ROOT)}#{i}", m.group(2)))
    return found


def _commands(text: str) -> list[list[str]]:
    """The command lines of a shell block (continuations joined, comments and ``&&`` chains split)."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split("&&"):
            words = shlex.split(part)
            if words and words[0] == "cd":
                continue
            if words:
                out.append(words)
    return out


PYTHON = _blocks("python")
SHELL = [(name, cmd) for name, text in _blocks("bash") for cmd in _commands(text)]


def test_the_docs_have_examples():
    assert DOCS[0].name == "README.md"
    assert len(PYTHON) >= 2 and len(SHELL) >= 10


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_python_example_runs(where, code, tmp_path, monkeypatch):
    if code.lstrip().startswith("# not run here:"):
        # An example that needs what CI has not (a batch scheduler): it must still
        # compile, and its napari_cycleulm imports must resolve.
        compile(code, where, "exec")
        for line in code.splitlines():
            if line.startswith(("from napari_cycleulm", "import napari_cycleulm")):
                exec(line, {})  # noqa: S102
        return
    if "napari.Viewer" in code:
        pytest.importorskip("napari")
        if not os.environ.get("DISPLAY"):
            pytest.skip("needs a display (run under xvfb-run)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__doc_example__"})  # noqa: S102


CLI = [(w, c) for w, c in SHELL if c[0] == "cycleulm"]
SCRIPTS = [(w, c) for w, c in SHELL if c[0] == "python" and len(c) > 1 and c[1].endswith(".py")]


@pytest.mark.parametrize(("where", "command"), CLI, ids=[f"{w}:{' '.join(c[:2])}" for w, c in CLI])
def test_cycleulm_command_parses(where, command):
    from napari_cycleulm.cli import build_parser

    try:
        build_parser().parse_args(command[1:])
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"{where}: `{' '.join(command)}` is refused by the CLI parser (exit {exc.code})")


@pytest.mark.parametrize(("where", "command"), SCRIPTS, ids=[f"{w}:{c[1]}" for w, c in SCRIPTS])
def test_script_command_uses_existing_options(where, command):
    script = ROOT / command[1]
    if not script.is_file():  # e.g. "cd benchmarks && python psf_accuracy.py"
        script = next(ROOT.glob(f"*/{command[1]}"), script)
    assert script.is_file(), f"{where}: {command[1]} does not exist"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               timeout=120, cwd=ROOT).stdout
    assert "usage" in help_text.lower(), f"{where}: {command[1]} --help printed no usage"
    for word in command[2:]:
        if word.startswith("--"):
            assert word.split("=")[0] in help_text, f"{where}: {command[1]} has no option {word}"
