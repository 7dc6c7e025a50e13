"""The built-in data loader: on a fixture tree in the package layout, and on the shipped set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fvtrain.data import DataEncodingError, DataFormatError, load, load_builtin, load_relation_words, split_all
from fvtrain.data.builtin_sets import builtin_root


def make_tree(root: Path) -> Path:
    (root / "relations").mkdir(parents=True)
    (root / "relations" / "antonym.tsv").write_text(
        "# antonym: the opposite of the word\n# group: lexical semantics\nhot\tcold\nup\tdown\nbig\tsmall/little\n", encoding="utf-8"
    )
    (root / "relations" / "plural.tsv").write_text("cat\tcats\ndog\tdogs\n", encoding="utf-8")
    (root / "relations" / "README.md").write_text("not a relation file\n", encoding="utf-8")
    (root / "analogies.jsonl").write_text(
        '{"a": "hot", "b": "cold", "c": "up", "d": "down", "distance": "near", "relation": "antonym"}\n'
        '{"a": "cat", "b": "cats", "c": "dog", "d": "dogs", "choices": ["cats", "dogs", "puppies"]}\n',
        encoding="utf-8",
    )
    (root / "relation_words.json").write_text(json.dumps({"antonym": ["opposite", "antonym"]}), encoding="utf-8")
    return root


def test_load_builtin_from_a_tree(tmp_path: Path) -> None:
    ds = load_builtin(make_tree(tmp_path / "builtin"))
    assert ds.format == "builtin" and list(ds.relations) == ["antonym", "plural"]
    assert ds.relations["antonym"].pairs[2].answers == ("small", "little")
    assert ds.relations["antonym"].source == {
        "format": "builtin", "path": "builtin/relations/antonym.tsv",
        "comments": ["antonym: the opposite of the word", "group: lexical semantics"],
        "title": "antonym: the opposite of the word", "group": "lexical semantics",
    }
    assert len(ds.analogies) == 2 and ds.analogies[1].answer_index == 1
    assert load_relation_words(tmp_path / "builtin") == {"antonym": ["opposite", "antonym"]}


def test_builtin_errors_name_the_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "b")
    (root / "relations" / "plural.tsv").write_text("cat\tcats\ndog\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"^builtin/relations/plural.tsv:2: expected 'word<TAB>answer1/answer2', got 'dog'$"):
        load_builtin(root)
    (root / "relations" / "plural.tsv").write_bytes("caf\xe9\tcafes\n".encode("latin-1"))
    with pytest.raises(DataEncodingError, match=r"builtin/relations/plural.tsv: .* must be UTF-8"):
        load_builtin(root)
    (root / "relation_words.json").write_text('{"antonym": "opposite"}', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r'relation_words.json: expected an object \{"relation": \["word", ...\]'):
        load_relation_words(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match=r"no built-in relations \(relations/\*.tsv\) found"):
        load_builtin(empty)
    assert load_relation_words(empty) == {}


def test_shipped_builtin_set() -> None:
    """The set inside the package (read through importlib.resources), once its files exist."""
    rel_dir = builtin_root() / "relations"
    if not rel_dir.is_dir() or not any(f.name.endswith(".tsv") for f in rel_dir.iterdir()):
        pytest.skip("fvtrain/data/builtin/relations/*.tsv not written yet: built-in content check skipped")
    ds = load("builtin")
    assert ds.format == "builtin" and ds.relations
    # the default run splits every built-in relation with the default settings
    splits = split_all(ds, seed=0)
    assert all(len(s.train) == 20 and s.val and s.test for s in splits.values())
    for item in ds.analogies:
        assert item.a and item.b and item.c and item.d
    words = load_relation_words()
    assert all(isinstance(v, list) and v for v in words.values())


def test_builtin_reads_through_importlib_resources_from_a_zip(tmp_path: Path) -> None:
    """As from a wheel or zipapp: the package is only importable from a zip file."""
    import subprocess
    import sys
    import zipfile

    pkg = Path(__file__).resolve().parents[1] / "fvtrain" / "data"
    tree = make_tree(tmp_path / "tree")
    archive = tmp_path / "fvtrain.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fvtrain/__init__.py", "")  # only the data layer, not the rest of fvtrain
        for f in pkg.rglob("*.py"):
            if "builtin" not in f.relative_to(pkg).parts:
                zf.write(f, Path("fvtrain/data") / f.relative_to(pkg))
        for f in tree.rglob("*"):
            if f.is_file():
                zf.write(f, Path("fvtrain/data/builtin") / f.relative_to(tree))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import fvtrain.data as d; "
        "assert d.__file__.startswith(sys.argv[1]), d.__file__; "
        "ds = d.load_builtin(); print(len(ds.relations), len(ds.analogies), d.load_relation_words())"
    )
    # -S: no site-packages, so neither the editable install nor the checkout can answer the import
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(archive)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2 2 {'antonym': ['opposite', 'antonym']}"
