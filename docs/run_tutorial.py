"""Run the Python code of a markdown tutorial and keep its printed output honest.

The tutorial (``docs/tutorial.md``) is ordinary markdown.  Its ```` ```python ````
blocks run in order in one namespace, with the working directory set to a
chosen folder (figures are saved relative to it, e.g. ``figures/x.png``).  A
```` ```text ```` block right after a python block is that block's recorded
output.  Blocks between ``<!-- tutorial: requires MODULE.NAME -->`` and
``<!-- tutorial: end -->`` need that object; they are skipped (reported as
such) when it cannot be imported.

    python docs/run_tutorial.py            # check: run in a temporary folder, compare outputs
    python docs/run_tutorial.py --update   # run in docs/, rewrite the output blocks, figures

The test suite (tests/test_tutorial.py) does the check.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUTORIAL = HERE / "tutorial.md"

_FENCE = re.compile(r"^```(\w*)\s*$")
_REQUIRES = re.compile(r"^<!--\s*tutorial:\s*requires\s+([\w.]+)\s*-->\s*$")
_END = re.compile(r"^<!--\s*tutorial:\s*end\s*-->\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+\.png)\)")


@dataclass
class Block:
    kind: str  # "python" or "text"
    code: str
    start: int  # 0-based line of the opening fence
    end: int  # 0-based line of the closing fence
    requires: str | None = None


@dataclass
class Step:
    """A python block, its recorded output block (if any) and what it printed."""

    block: Block
    recorded: Block | None
    output: str | None = None  # None: not run (skipped)


@dataclass
class Run:
    steps: list[Step]
    namespace: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # unmet requirements
    workdir: Path | None = None


def parse(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, with their requirement tags."""
    lines = text.splitlines()
    blocks: list[Block] = []
    requires: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _REQUIRES.match(line):
            requires = m.group(1)
        elif _END.match(line):
            requires = None
        elif m := _FENCE.match(line):
            kind = m.group(1)
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != "```":
                j += 1
            if j == len(lines):
                raise ValueError(f"unclosed code block at line {i + 1}")
            body = "\n".join(lines[i + 1 : j])
            blocks.append(Block(kind, body + "\n", i, j, requires))
            i = j
        i += 1
    return blocks


def steps(text: str) -> list[Step]:
    """Python blocks paired with the text block that directly follows each."""
    lines = text.splitlines()
    blocks = parse(text)
    out: list[Step] = []
    for k, b in enumerate(blocks):
        if b.kind != "python":
            continue
        rec = None
        if k + 1 < len(blocks) and blocks[k + 1].kind == "text":
            nxt = blocks[k + 1]
            if all(not ln.strip() for ln in lines[b.end + 1 : nxt.start]):
                rec = nxt
        out.append(Step(b, rec))
    return out


def available(requirement: str) -> bool:
    """Whether ``module.name`` can be imported (a module that fails to import,
    e.g. one still being written, counts as unavailable)."""
    module, _, name = requirement.rpartition(".")
    try:
        mod = importlib.import_module(module)
    except Exception:
        return False
    return hasattr(mod, name)


def run(path: Path = TUTORIAL, workdir: Path | None = None) -> Run:
    """Execute the python blocks of ``path`` in order inside ``workdir``
    (default: a new temporary folder), capturing what each prints."""
    text = Path(path).read_text()
    todo = steps(text)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tutorial-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ns: dict = {"__name__": "__tutorial__"}
    result = Run(todo, ns, workdir=workdir)
    ok: dict[str, bool] = {}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        for st in todo:
            req = st.block.requires
            if req is not None:
                if req not in ok:
                    ok[req] = available(req)
                    if not ok[req]:
                        result.skipped.append(req)
                if not ok[req]:
                    continue
            # offset by blank lines so tracebacks give the markdown's line numbers
            source = "\n" * (st.block.start + 1) + st.block.code
            code = compile(source, str(path), "exec")
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), warnings.catch_warnings():
                warnings.simplefilter("default")
                exec(code, ns)
            st.output = buf.getvalue()
    finally:
        os.chdir(cwd)
    return result


def _tokens(text: str) -> list[str | float]:
    out: list[str | float] = []
    pos = 0
    for m in _NUMBER.finditer(text):
        out.extend(text[pos : m.start()].split())
        out.append(float(m.group()))
        pos = m.end()
    out.extend(text[pos:].split())
    return out


def same_output(recorded: str, actual: str, rtol: float = 1e-4, atol: float = 1e-10) -> bool:
    """Equal up to layout (runs of white space) and numbers within ``rtol``
    (optimizer results may differ in the last printed digits between machines)."""
    a, b = _tokens(recorded), _tokens(actual)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if abs(x - y) > atol + rtol * max(abs(x), abs(y)):
                return False
        elif x != y:
            return False
    return True


def mismatches(result: Run) -> list[str]:
    """Blocks whose output differs from the recorded one (or lacks a record)."""
    bad = []
    for st in result.steps:
        if st.output is None:
            continue
        rec = st.recorded.code if st.recorded is not None else ""
        if not same_output(rec, st.output):
            bad.append(
                f"block at line {st.block.start + 1}:\n--- recorded\n{rec}--- printed\n{st.output}"
            )
    return bad


def images(text: str) -> list[str]:
    """Relative paths of the PNG images the markdown shows."""
    return _IMAGE.findall(text)


def update(path: Path = TUTORIAL) -> Run:
    """Run in the tutorial's own folder (writing its figures there) and rewrite
    the output blocks with what the code printed."""
    path = Path(path)
    result = run(path, workdir=path.parent)
    if result.skipped:
        raise RuntimeError(f"cannot update: {result.skipped} not available")
    lines = path.read_text().splitlines()
    # from the end, so earlier line numbers stay valid
    for st in reversed(result.steps):
        out = (st.output or "").rstrip("\n")
        new = ["```text", *out.splitlines(), "```"] if out else []
        if st.recorded is not None:
            lines[st.recorded.start : st.recorded.end + 1] = new
        elif new:
            lines[st.block.end + 1 : st.block.end + 1] = ["", *new]
    path.write_text("\n".join(lines) + "\n")
    return result


def main(argv: list[str]) -> int:
    if "--update" in argv:
        update()
        print(f"updated {TUTORIAL} and its figures")
        return 0
    result = run()
    bad = mismatches(result)
    for msg in bad:
        print(msg)
    if result.skipped:
        print(f"skipped sections needing {result.skipped}")
    print("ok" if not bad else f"{len(bad)} block(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
