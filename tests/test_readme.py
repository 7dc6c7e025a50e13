"""The README's Python examples run as written: every ```python block, in order, in one namespace."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ```python block of ``text``."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def test_block_finder():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = x + 1\n")]


def test_readme_has_python_blocks_that_parse():
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python block"
    for line, code in blocks:
        ast.parse(code, filename=f"README.md:{line}")
    assert any("fvtrain.api" in code or "from fvtrain import api" in code for _, code in blocks)


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    """Loads the embedded model and runs the README's example (about 2-3 minutes on 2 CPU cores)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FVTRAIN_OUTPUT_DIR", str(tmp_path / "outputs"))
    namespace: dict = {"__name__": "__readme__"}
    for line, code in python_blocks(README.read_text()):
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
    out = capsys.readouterr().out
    print(out)
    assert out.strip(), "the README's examples print nothing"
