"""Nothing silently wrong, nothing lost, nothing let in: relation names as file names, pickled
checkpoints, one run per folder, incomplete or damaged vectors, checkpoints every epoch, and every
config value checked before any weights load. Each test reproduces a failure of an earlier version."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fvtrain import runs
from fvtrain.artifacts import (
    UnsafeNameError,
    check_names,
    file_stem,
    name_of,
    save_vector,
)
from fvtrain.config import compose
from fvtrain.errors import ArtifactError, ConfigError

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _cli(module: str, run_dir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=run_dir.parent, env=_env(), capture_output=True, text=True, timeout=timeout)


def _no_model(monkeypatch):
    """Make any model load fail loudly: checks must come before it."""
    from fvtrain.runtime import LazyModel

    def boom(self):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(LazyModel, "__call__", boom)


# -- 1. relation names are file names that stay inside the run folder --------------------------------

@pytest.mark.parametrize("name", ["../../../../escaped", "/tmp/x/absolute", "a/b", "..", ".hidden",
                                  "100%", "C:\\evil", "nul\x00byte"])
def test_unsafe_relation_names_are_encoded_reversibly(name, tmp_path):
    stem = file_stem(name)
    assert "/" not in stem and "\\" not in stem and "\x00" not in stem and not stem.startswith(".")
    assert name_of(stem) == name
    path = save_vector(tmp_path / "v", name, torch.ones(4), {"relation": name})
    assert path.parent == tmp_path / "v" and path.resolve().is_relative_to(tmp_path / "v")
    vs = runs.load_vectors(tmp_path / "v")
    assert vs.names == [name]


def test_ordinary_names_keep_their_file_names():
    for name in ("antonym", "1a", "capital-common-countries", "L02 [hypernyms - misc]", "ü_ber"):
        assert file_stem(name) == name


@pytest.mark.parametrize("names, message", [
    ([""], "an empty name"),
    (["CON"], "reserved for devices"),
    (["x" * 300], "at most 200"),
    (["Antonym", "antonym"], "'Antonym' and 'antonym' would be written to the same file"),
])
def test_names_that_cannot_be_files_are_refused(names, message):
    with pytest.raises(UnsafeNameError, match=message):
        check_names(names)


@pytest.mark.slow
def test_a_data_file_cannot_make_extraction_write_outside_its_run_folder(tmp_path):
    pairs = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "new"),
             ("wet", "dry"), ("high", "low"), ("dark", "light")]
    rows = ["x,y,relation"]
    for rel in ("../../../../escaped", "/tmp/fvtrain-x/absolute"):
        rows += [f"{a},{b},{rel}" for a, b in pairs]
    data = tmp_path / "evil.csv"
    data.write_text("\n".join(rows) + "\n")
    root = tmp_path / "a" / "b" / "c" / "d"
    root.mkdir(parents=True)
    run = root / "run"
    before = {p for p in tmp_path.rglob("*")}
    p = _cli("fvtrain.extract", run, "debug=fast", f"data.path={data}", "data.relations=null", "data.n_train=5",
             "extract.n_shots=3", "extract.layer_sweep=false")
    assert p.returncode == 0, p.stderr[-3000:]
    written = {q for q in tmp_path.rglob("*")} - before
    assert written and all(q == run or run in q.parents for q in written if q != root)
    assert not Path("/tmp/fvtrain-x/absolute.safetensors").exists()
    names = sorted(json.loads(f.read_text())["relation"] for f in (run / "vectors").glob("*.json"))
    assert names == ["../../../../escaped", "/tmp/fvtrain-x/absolute"]
    assert len(list((run / "aie").glob("*.safetensors"))) == 2  # AIE maps do not overwrite vectors


# -- 2. no pickle from a user file is ever executed ---------------------------------------------

class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    from fvtrain.training.job import check_checkpoint

    marker = tmp_path / "pwned.txt"
    ck = tmp_path / "evil.ckpt"
    with open(ck, "wb") as f:
        pickle.dump({"hyper_parameters": {}, "payload": _Payload(str(marker))}, f)
    with pytest.raises(ConfigError, match="evil.ckpt cannot be read"):
        check_checkpoint(ck, ["antonym"], 48, "tiny-llama")
    assert not marker.exists()


def test_no_unrestricted_torch_load_in_fvtrain():
    offenders = [f"{p}:{i}" for p in (REPO / "fvtrain").rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "torch.load(" in line and "weights_only=True" not in line]
    assert offenders == []


# -- 3. a run folder belongs to one run ---------------------------------------------------------

def test_a_finished_run_folder_is_refused_unless_resuming(tmp_path):
    with runs.claim(tmp_path / "run"):
        (tmp_path / "run" / runs.CONFIG).write_text("seed: 0\n")
    with pytest.raises(runs.RunFolderError, match="already holds a run"):
        with runs.claim(tmp_path / "run"):
            pass
    with runs.claim(tmp_path / "run", resume=True):
        pass


def test_a_folder_in_use_is_refused_and_a_dead_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = run / runs.LOCK
    import socket

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(runs.RunFolderError, match=f"in use by process {os.getpid()}"):
        with runs.claim(run):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    with runs.claim(run):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_default_run_folders_of_two_processes_differ(tmp_path):
    code = ("from hydra import compose, initialize_config_dir\n"
            "from fvtrain.config import config_dir\n"
            "with initialize_config_dir(str(config_dir()), version_base='1.3'):\n"
            "    c = compose('extract', return_hydra_config=True)\n"
            "from omegaconf import OmegaConf\n"
            "c.hydra.runtime.output_dir='x'; c.hydra.job.name='x'\n"
            "print(OmegaConf.select(c, 'hydra.run.dir', throw_on_missing=False))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(d.startswith("outputs/extract/") for d in dirs) and dirs[0] != dirs[1]


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_stops_before_writing(tmp_path):
    run = tmp_path / "run"
    args = ["debug=fast", "extract.n_shots=3", "extract.layer_sweep=false"]
    assert _cli("fvtrain.extract", run, *args).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    p = _cli("fvtrain.extract", run, *args, "seed=1")
    assert p.returncode == 2 and "already holds a run" in p.stderr and "Traceback" not in p.stderr
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts
             and p.suffix != ".log"}
    assert after == {k: v for k, v in before.items() if k in after}


# -- 4. one loader that names the damaged or missing file ---------------------------------------

def _vectors(folder: Path, names=("antonym", "plural")) -> None:
    for n in names:
        save_vector(folder, n, torch.randn(8), {"relation": n, "layer": 1, "model_id": "tiny-llama"})


def test_a_manifest_without_its_tensor_is_an_error_everywhere(tmp_path):
    from fvtrain.composition import BankError, load_bank

    _vectors(tmp_path / "bank")
    (tmp_path / "bank" / "plural.safetensors").unlink()
    with pytest.raises(ArtifactError, match="plural.json is there but plural.safetensors is missing"):
        runs.load_vectors(tmp_path / "bank")
    with pytest.raises(BankError, match="plural.safetensors is missing"):
        load_bank(tmp_path)


def test_a_tensor_without_its_manifest_is_an_error(tmp_path):
    _vectors(tmp_path / "v")
    (tmp_path / "v" / "antonym.json").unlink()
    with pytest.raises(ArtifactError, match="antonym.safetensors has no antonym.json manifest"):
        runs.load_vectors(tmp_path / "v")


def test_a_damaged_manifest_or_tensor_names_that_file(tmp_path):
    _vectors(tmp_path / "v")
    (tmp_path / "v" / "antonym.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest .*antonym\.json is damaged"):
        runs.read_vector(tmp_path / "v" / "antonym.safetensors")
    (tmp_path / "v" / "plural.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ArtifactError, match=r"vector file .*plural\.safetensors is damaged"):
        runs.read_vector(tmp_path / "v" / "plural.safetensors")


def test_eval_refuses_an_incomplete_vector_before_the_model_loads(tmp_path, monkeypatch):
    from fvtrain.evaluation import job

    _no_model(monkeypatch)
    _vectors(tmp_path / "fv" / "vectors")
    (tmp_path / "fv" / "vectors" / "plural.safetensors").unlink()
    cfg = compose("eval", ["model=tiny-llama", f"vectors.fv={tmp_path / 'fv'}"], output_dir=tmp_path / "out")
    with pytest.raises(ArtifactError, match="plural.safetensors is missing"):
        job.run(cfg, tmp_path / "out", None)


# -- 6. checkpoints ---------------------------------------------------------------------------------

def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from fvtrain.training.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    good = target.read_bytes()

    def disk_full(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2}, target)
    assert target.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_truncated_checkpoint_names_itself_and_the_way_back(tmp_path):
    from fvtrain.training.job import load_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"epoch": 3}, folder / "epoch003.ckpt")
    torch.save({"epoch": 5, "w": torch.ones(1000)}, folder / "last.ckpt")
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"last\.ckpt cannot be read .* ckpt_path=.*epoch003\.ckpt"):
        load_checkpoint(folder / "last.ckpt")


@pytest.mark.slow
def test_resume_mid_epoch_after_non_improving_epochs_reaches_the_same_vectors(tmp_path):
    """A random tiny model never improves its validation accuracy, so last.ckpt must not depend on
    improvement: stop in the middle of epoch 4 of 5 and resume from the end of epoch 3."""
    from fvtrain.artifacts import list_vectors, load_vector

    fv = tmp_path / "fv"
    assert _cli("fvtrain.extract", fv, "debug=fast", "extract.n_shots=3", "extract.layer_sweep=false").returncode == 0
    args = ["debug=fast", "ffv.n_shots=3", f"ffv.fv_run={fv}", "trainer.max_epochs=5", "logger=[]",
            "ffv.batch_per_relation=2"]
    assert _cli("fvtrain.train", tmp_path / "whole", *args).returncode == 0
    cut = tmp_path / "cut"
    p = _cli("fvtrain.train", cut, *args, "+callbacks.interrupt._target_=fvtrain.training.callbacks.Interrupt",
             "+callbacks.interrupt.after_epochs=3", "+callbacks.interrupt.mid_epoch=true")
    assert p.returncode != 0 and not (cut / "metrics.json").exists()
    ck = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2  # the third epoch, although the best one is epoch 0
    assert [p.name for p in (cut / "checkpoints").iterdir() if not p.name.endswith(".ckpt")] == []
    assert _cli("fvtrain.train", cut, *args, "ckpt_path=last").returncode == 0

    def bank(run):
        return {p.stem: load_vector(p)[0] for p in list_vectors(run / "bank")}

    whole, resumed = bank(tmp_path / "whole"), bank(cut)
    assert list(whole) == list(resumed)
    for r in whole:
        torch.testing.assert_close(resumed[r], whole[r], rtol=0, atol=0)


# -- 7. every config value checked before any weights load, one line, exit 2 --------------------

@pytest.mark.parametrize("name, overrides, message", [
    ("train", ["trainer.max_epochs=-1"], "trainer.max_epochs=-1 would train forever"),
    ("extract", ["extract.n_corrupt=0"], "extract.n_corrupt=0: it must be an integer >= 1"),
    ("extract", ["extract.n_shots=-1"], "extract.n_shots=-1: it must be an integer >= 0"),
    ("extract", ["extract.k=0"], "extract.k=0: the function vector needs at least one head"),
    ("train", ["optim.optimizer.lr=-1"], "the learning rate must be a finite positive number"),
    ("train", ["optim.optimizer.lr=nan"], "the learning rate must be a finite positive number"),
    ("train", ["+ffv.lr=1"], r"unknown config key\(s\): ffv.lr \(did you mean optim.optimizer.lr\?\)"),
    ("pipeline", ["composition.optim.optimizer.lr=0"], "composition.optim.optimizer.lr=0"),
    ("compose", ["+compose.max_row=3"], r"compose.max_row \(did you mean compose.max_rows\?\)"),
])
def test_bad_values_stop_before_the_model_loads(name, overrides, message, tmp_path, monkeypatch):
    from fvtrain.composition import job as compose_job
    from fvtrain.extraction import job as extract_job
    from fvtrain.pipeline import pipeline
    from fvtrain.training import job as train_job

    _no_model(monkeypatch)
    cfg = compose(name, ["model=tiny-llama", *overrides], output_dir=tmp_path / "out")
    run = {"extract": lambda: extract_job.run(cfg, tmp_path / "out", None),
           "train": lambda: train_job.run(cfg, tmp_path / "out", None),
           "compose": lambda: compose_job.run(cfg, tmp_path / "out", None, basis=tmp_path),
           "pipeline": lambda: pipeline(cfg, tmp_path / "out")}[name]
    with pytest.raises(ConfigError, match=message):
        run()
    assert not any((tmp_path / "out").rglob("*.safetensors"))


def test_keys_a_target_accepts_are_not_unknown(tmp_path):
    from fvtrain.preflight import check_config

    cfg = compose("train", ["model=tiny-llama", "+trainer.gradient_clip_val=1.0",
                            "+callbacks.interrupt._target_=fvtrain.training.callbacks.Interrupt",
                            "+optim.optimizer.betas=[0.9,0.99]"], output_dir=tmp_path)
    check_config(cfg)
    bad = compose("train", ["model=tiny-llama", "+trainer.max_epoch=3"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.max_epoch \(did you mean trainer.max_epochs\?\)"):
        check_config(bad)


def test_a_config_error_is_one_line_and_exit_2(tmp_path):
    p = _cli("fvtrain.extract", tmp_path / "run", "model=tiny-llama", "extract.k=0")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("extract: error: extract.k=0") or \
        "error: extract.k=0: the function vector needs at least one head" in p.stderr
    assert "Traceback" not in p.stderr
    full = subprocess.run([sys.executable, "-m", "fvtrain.extract", "model=tiny-llama", "extract.k=0",
                           f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path, capture_output=True, text=True,
                          env={**_env(), "HYDRA_FULL_ERROR": "1"}, timeout=300)
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_a_nan_learning_rate_reaches_the_check_as_a_float():
    """Hydra parses ``nan`` as a float, so the check above sees a number, not a string."""
    cfg = compose("train", ["optim.optimizer.lr=nan"])
    assert isinstance(cfg.optim.optimizer.lr, float) and math.isnan(cfg.optim.optimizer.lr)
