"""Every ```console block of README.md and docs/*.md is what graphc prints.

Each document's blocks run in order, in one scratch directory holding a copy of
specs/, as a reader following the text would run them (a later block may use a
file an earlier one built). Every `$ ...` line is run exactly as written:
`graphc ...` in-process (the same entry point as the script), `python -c ...`
in a subprocess; its output is compared with the lines under it. "..." stands
for any lines; timings ("in 4 ms", "in 0.02 s") are not compared; numbers
agree to 1e-4 relative, because printed float statistics may differ in the last
digit between CPUs; a shown line that ends early (`tag_scores: float32[2, 6, 17]`)
matches a printed line that continues (the statistics after it).
A block that shows the output after an edit the text asks for carries an
HTML comment just above it, invisible when rendered, and the edit is undone
after the block:
  <!-- edit specs/x.yaml: "old text" => "new text" -->
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, SPECS, cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
EDIT = re.compile(r'<!-- edit (\S+): "(.*)" => "(.*)" -->')


def console_blocks(text: str) -> list[tuple[int, tuple | None, list[str]]]:
    """(line number of the first line inside, edit or None, the block's lines)."""
    blocks, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "```console":
            continue
        above = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        edit = EDIT.fullmatch(above.strip())
        end = lines.index("```", i + 1)
        blocks.append((i + 2, edit.groups() if edit else None, lines[i + 1:end]))
    return blocks


def _line_matches(want: str, got: str) -> bool:
    want, got = (re.sub(r"\bin \d+(?:\.\d+)? m?s\b", "in (time)", s).rstrip() for s in (want, got))
    if len(got) > len(want) and got[len(want):len(want) + 2] == "  ":
        got = got[:len(want)]                     # a shown prefix, the printed statistics cut
    if NUMBER.sub("#", want) != NUMBER.sub("#", got):
        return False
    for w, g in zip(NUMBER.findall(want), NUMBER.findall(got)):
        a, b = float(w.replace(",", "")), float(g.replace(",", ""))
        if abs(a - b) > 1e-4 * max(abs(a), abs(b)) + 1e-6:
            return False
    return True


def output_matches(want: list[str], got: list[str]) -> bool:
    if not want:
        return not got
    if want[0] == "...":
        return any(output_matches(want[1:], got[k:]) for k in range(len(got) + 1))
    return bool(got) and _line_matches(want[0], got[0]) and output_matches(want[1:], got[1:])


def run_console(command: str, cwd) -> list[str]:
    argv, keep = shlex.split(command), None
    if "|" in argv:                               # only '| head -N' is used in the docs
        pipe = argv.index("|")
        assert argv[pipe + 1:pipe + 2] == ["head"], command
        keep, argv = int(argv[pipe + 2].lstrip("-")), argv[:pipe]
    if argv[0] == "graphc":
        _, out, err = cli(*argv[1:])
    elif argv[:2] == ["python", "-c"] and len(argv) == 3:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", argv[2]], cwd=cwd, capture_output=True, text=True,
                              timeout=120, env=env)
        out, err = done.stdout, done.stderr
    else:
        raise AssertionError(f"a console block runs 'graphc ...' or 'python -c ...', not: {command}")
    lines = (out + err).splitlines()
    return lines[:keep] if keep is not None else lines


def run_document(path, tmp_path, monkeypatch) -> int:
    """Runs every console block of one document; returns how many commands ran."""
    shutil.copytree(SPECS, tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    rel, ran = path.relative_to(ROOT), 0
    for line, edit, block in console_blocks(path.read_text(encoding="utf-8")):
        undo = None
        if edit:
            target, old, new = edit
            text = (tmp_path / target).read_text(encoding="utf-8")
            assert old in text, f"{rel}:{line}: the edit's text '{old}' is not in {target}"
            (tmp_path / target).write_text(text.replace(old, new, 1), encoding="utf-8")
            undo = (tmp_path / target, text)
        commands = [i for i, ln in enumerate(block) if ln.startswith("$ ")]
        assert commands and commands[0] == 0, f"{rel}:{line}: a console block starts with '$ command'"
        for at, stop in zip(commands, commands[1:] + [len(block)]):
            got = run_console(block[at][2:], tmp_path)
            want = block[at + 1:stop]
            ran += 1
            assert output_matches(want, got), \
                f"{rel}:{line + at}: {block[at]}\n--- the docs show:\n" + "\n".join(want) + \
                "\n--- it printed:\n" + "\n".join(got)
        if undo:
            undo[0].write_text(undo[1], encoding="utf-8")
    return ran


# documents whose blocks need fixtures made elsewhere (a checkpoint saved by transformers),
# run as written by the named test instead
RUN_ELSEWHERE = {"huggingface.md": ("tests/test_hf_import.py", "def test_docs_console_block_runs_as_written")}
WITH_BLOCKS = [p for p in DOCS if console_blocks(p.read_text(encoding="utf-8")) and p.name not in RUN_ELSEWHERE]


def test_documents_run_elsewhere_are_run_there():
    for name, (test_file, test) in RUN_ELSEWHERE.items():
        assert console_blocks((ROOT / "docs" / name).read_text(encoding="utf-8"))
        source = (ROOT / test_file).read_text(encoding="utf-8")
        assert test in source and f'"{name}"' in source, f"{test_file} no longer runs docs/{name}"


def test_the_docs_have_console_blocks():
    tutorial = console_blocks((ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8"))
    assert len(tutorial) >= 5 and any(edit for _, edit, _ in tutorial)
    assert ROOT / "README.md" in WITH_BLOCKS


@pytest.mark.parametrize("path", WITH_BLOCKS, ids=[p.name for p in WITH_BLOCKS])
def test_console_blocks_are_what_graphc_prints(path, tmp_path, monkeypatch):
    assert run_document(path, tmp_path, monkeypatch) > 0


def test_a_wrong_console_block_fails(tmp_path, monkeypatch):
    """The machinery can fail: a doc whose shown output differs, or whose command
    graphc refuses (the tutorial's old `range: [1, vocab]` with padding 0), is caught."""
    doc = tmp_path / "doc.md"
    doc.write_text("```console\n$ graphc check specs/mlp.yaml\nok\n```\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="it printed"):
        run_document(doc, tmp_path / "run", monkeypatch)
