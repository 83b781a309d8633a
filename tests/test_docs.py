"""Every code block of README.md and docs/*.md runs as written, on the bundled data.

Each fenced block is one test. ``bash`` blocks run in bash, ``python`` blocks in this Python,
both in a scratch folder laid out like a clone (symbolic links to the repository's top-level
entries, ``../shared`` beside it when the repository has one), with ``featmatch`` and
``python`` on PATH running this checkout's code. ``text`` blocks are synopses or output and
are not run; any other language is refused, so that a snippet cannot slip through unrun.

A block may be preceded by one marker comment:

- ``<!-- doc-test: needs-data -->``: reads ``../shared/data``; skipped with the one reason of
  the ``data_dir`` fixture without it (a failure under ``FEATMATCH_REQUIRE_DATA=1``, as in CI).
- ``<!-- doc-test: needs-gpu -->``: needs a CUDA GPU; skipped without one.
- ``<!-- doc-test: needs-torch -->``: needs the ``torch`` extra; skipped without it.
- ``<!-- doc-test: setup -->``: install commands. The one holding ``pytest`` must equal the
  test command of ``.ci/run``; of the others, what follows the last ``pip install`` of a line
  (the job the command runs) is run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import DATA, MISSING_DATA, REQUIRE_DATA_ENV, cuda_available

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN = {"bash", "python"}
MARKERS = {"needs-data", "needs-gpu", "needs-torch", "setup"}
#: Seconds one block may take (the blocks run on the small bundled images).
TIMEOUT = 300

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*doc-test:\s*(\S+)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the marker comment just above each (if any)."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        above = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mk = _MARKER.match(above.strip())
        out.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n", mk.group(1) if mk else None))
        i = j + 1
    return out


ALL = [b for path in DOCS for b in blocks(path)]


def test_every_block_is_declared():
    """A language on every fence, a known marker on every marked block, and snippets to run."""
    for b in ALL:
        assert b.lang in RUN | {"text"}, f"{b.id}: fence language '{b.lang}' (use bash, python or text)"
        assert b.marker is None or b.marker in MARKERS, f"{b.id}: unknown marker '{b.marker}'"
    readme = [b for b in ALL if b.path.name == "README.md"]
    assert [b.marker for b in readme[:2]] == ["setup", "setup"], "the README starts with its two commands"
    assert sum(b.lang in RUN for b in ALL) >= 10


def test_the_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    test_command = next(b for b in ALL if b.path.name == "README.md" and "pytest" in b.code).code.strip()
    assert test_command in ci, f".ci/run must run the README's test command:\n{test_command}"


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict]:
    """A folder laid out like a clone (links to the repository), with ``../shared`` when there is one,
    and an environment whose ``featmatch``, ``python`` and ``python3`` run this checkout."""
    root = tmp_path_factory.mktemp("docs")
    work = root / "featmatch"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv", "out") and not entry.name.endswith((".egg-info", "_cache")):
            (work / entry.name).symlink_to(entry)
    if DATA.is_dir():
        (root / "shared").symlink_to(DATA.parent)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("featmatch", f'exec "{sys.executable}" -m featmatch.cli "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
        ("python3", f'exec "{sys.executable}" "$@"'),
    ):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return work, env


def _job_part(code: str) -> str:
    """Of each line of a setup block, what follows its last ``pip install ... &&`` (the job)."""
    jobs = []
    for line in code.splitlines():
        parts = [p.strip() for p in line.split("&&")]
        last = max((i for i, p in enumerate(parts) if p.startswith("pip install")), default=None)
        if last is not None and last + 1 < len(parts):
            jobs.append(" && ".join(parts[last + 1 :]))
    return "\n".join(jobs)


@pytest.mark.parametrize("block", [b for b in ALL if b.lang in RUN], ids=lambda b: b.id)
def test_block_runs_as_written(block: Block, clone):
    work, env = clone
    code = block.code
    if block.marker == "needs-data" and not DATA.is_dir():
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(f"{REQUIRE_DATA_ENV}=1 but {DATA} is missing")
        pytest.skip(MISSING_DATA)
    if block.marker == "needs-gpu" and not cuda_available():
        pytest.skip("no CUDA GPU on this machine")
    if block.marker == "needs-torch" and not _have_torch():
        pytest.skip("needs the torch extra (pip install torch==2.13.0 && pip install -e '.[torch]')")
    if block.marker == "setup":
        if "pytest" in code:
            pytest.skip("the test command itself: .ci/run runs it (test_the_readme_test_command_is_what_ci_runs)")
        code = _job_part(code)
        if not code:
            pytest.skip("install commands only: run from a fresh clone by scripts/check_wheel.sh and by hand")
    (work / "out").mkdir(exist_ok=True)
    cmd = ["bash", "-euo", "pipefail", "-c", code] if block.lang == "bash" else [sys.executable, "-c", code]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"{block.id} exited {p.returncode}:\n{code}\n--- stderr:\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def _have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


_OUTPUT = re.compile(r"(?:\s(?:-o|--output|--plot|--warp|--out-dir)\s+|>\s*|output=\")([^\s\"']+)")


def test_what_the_snippets_write_is_git_ignored():
    """Files the README's and docs' commands write (``-o``, ``--plot``, ``> file``, ``output=``) are
    git-ignored, so that following the README leaves a clean ``git status``."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (an installed copy of the tests)")
    codes = [_job_part(b.code) if b.marker == "setup" else b.code for b in ALL if b.lang in RUN]
    written = sorted({m for code in codes for m in _OUTPUT.findall(code)})
    assert written, "no output path found in the snippets"
    for path in written:
        p = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert p.returncode == 0, f"{path} (written by a snippet) is not git-ignored"
