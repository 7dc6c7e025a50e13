"""``fvtrain-data PATH`` (and ``python -m fvtrain.data``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fvtrain.data.__main__ import main

FIX = Path(__file__).resolve().parent / "fixtures" / "data"
ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_is_one_object_with_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--json", str(FIX / "google"))
    assert rc == 0
    data = json.loads(out)  # exactly one JSON document on stdout
    assert data["format"] == "google"
    assert data["relations"] == {"capital-common-countries": 3, "gram8-plural": 3}
    assert (data["analogies"], data["judgments"], data["skipped"]) == (6, 0, 0)


def test_json_counts_judgments_and_skips(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--json", str(FIX / "bless"))
    data = json.loads(out)
    assert rc == 0 and data["relations"] == {"hypernym": 3, "meronym": 2, "attribute": 2, "event": 1}
    assert data["skipped"] == 4 and data["skipped_reasons"]["BLESS 'coord' not read (pass keep=[..., 'coord'] to read it)"] == 1
    rc, out, _ = run(capsys, "--json", "--format", "relsim", str(FIX / "relsim"))
    assert rc == 0 and json.loads(out)["judgments"] == 8


def test_human_output_shows_relations_counts_and_skips(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, str(FIX / "bless" / "BLESS.txt"))
    assert rc == 0
    assert "format  bless (detected)" in out
    assert "4 relations, 8 pairs" in out and "hypernym" in out and "alligator -> animal" in out
    assert "skipped  4" in out and "random control" in out
    rc, out, _ = run(capsys, str(FIX / "semeval"), "--relations", "1a")
    assert rc == 0 and "1 relations, 5 pairs" in out and "prototypicality ratings  5" in out


def test_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = run(capsys, str(tmp_path / "missing.tsv"))
    assert rc == 2 and out == ""
    assert err == f"fvtrain-data: error: data path not found: {tmp_path / 'missing.tsv'} (give a file or folder with data)\n"
    rc, _, err = run(capsys, str(FIX / "todd"), "--relations", "antonyms")
    assert rc == 2 and "unknown relation 'antonyms'; did you mean 'antonym'?" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("hot\tcold\nfoo\n", encoding="utf-8")
    rc, _, err = run(capsys, "--json", str(bad))
    assert rc == 2 and f"{bad}:2: expected 'word<TAB>answer1/answer2', got 'foo'" in err


def test_builtin_word(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "--json", "builtin")
    if rc == 2 and "no built-in relations" in err:
        pytest.skip("fvtrain/data/builtin/relations/*.tsv not written yet: built-in CLI check skipped")
    data = json.loads(out)
    assert rc == 0 and data["format"] == "builtin" and data["relations"]


def test_python_dash_m(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fvtrain.data", "--json", str(FIX / "pairs" / "antonym.tsv")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["relations"] == {"antonym": 3}
