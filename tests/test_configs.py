"""Every shipped config composes; presets resolve; multirun and SLURM submission work."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fvtrain.cli import compose, config_dir, rewrite_model_override
from helpers import run_cli

CONF = config_dir()
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))


def _group_options():
    for g in GROUPS:
        for f in sorted((CONF / g).glob("*.yaml")):
            yield g, f.stem


def _primaries_with(group: str) -> list[str]:
    out = []
    for p in PRIMARY:
        defaults = OmegaConf.to_container(OmegaConf.load(CONF / f"{p}.yaml")).get("defaults", [])
        names = [next(iter(d)) if isinstance(d, dict) else str(d) for d in defaults]
        if group in names or any(n.lstrip("/").startswith(group) for n in names):
            out.append(p)
    return out


@pytest.mark.parametrize("group,option", list(_group_options()))
def test_every_config_file_composes(group, option):
    primaries = _primaries_with(group)
    if not primaries:
        pytest.skip(f"no primary config in conf/ lists the group {group!r} in its defaults")
    for primary in primaries:
        cfg = compose(primary, [f"{group}={option}"])
        assert cfg is not None
        # Everything outside hydra resolves (interpolations, env defaults).
        OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("primary", PRIMARY)
def test_primary_configs_compose_and_resolve(primary):
    cfg = compose(primary)
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.model._target_ == "fvtrain.models.load_model"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_presets_resolve(preset):
    cfg = compose("extract", [f"experiment={preset}"])
    c = OmegaConf.to_container(cfg, resolve=True)
    if preset == "gptj_paper":
        assert c["model"]["name"] == "EleutherAI/gpt-j-6b" and c["extract"]["layer"] == 9
        assert c["model"]["dtype"] == "bfloat16"


def test_model_override_accepts_hub_ids_and_paths():
    assert rewrite_model_override(["model=tiny-llama"], CONF) == ["model=tiny-llama"]
    assert rewrite_model_override(["model=EleutherAI/gpt-j-6b", "seed=1"], CONF) == [
        "model=hub", "model.name=EleutherAI/gpt-j-6b", "seed=1"]
    assert rewrite_model_override(["model=gemma3-270m,Qwen/Qwen3-0.6B"], CONF) == [
        "model=hub", "model.name=gemma3-270m,Qwen/Qwen3-0.6B"]
    cfg = compose("extract", ["model=/some/where/model.gguf"])
    assert cfg.model.name == "/some/where/model.gguf" and cfg.model.self_check is True


NO_GPU = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")


@NO_GPU
@pytest.mark.parametrize("config,overrides,message", [
    ("extract", ["model.device=cuda"],
     "model.device=cuda, but this machine has 0 CUDA devices; use model.device=cpu (and trainer=cpu)"),
    ("train", ["trainer=gpu"], "trainer.accelerator=gpu, but this machine has no CUDA device; use trainer=cpu"),
    ("pipeline", ["experiment=gptj_paper"], "model.device=cuda, but this machine has 0 CUDA devices"),
])
def test_missing_devices_fail_before_the_model_loads(config, overrides, message):
    from fvtrain.errors import ConfigError
    from fvtrain.preflight import check_geometry

    cfg = compose(config, ["model=tiny-llama", *overrides] if "experiment" not in overrides[0] else overrides)
    with pytest.raises(ConfigError) as err:
        check_geometry(cfg, None)
    assert message in str(err.value)


def test_device_check_accepts_what_the_machine_has():
    from fvtrain.preflight import check_devices

    check_devices(compose("train", ["model=tiny-llama", "trainer=ddp_sim"]))
    check_devices(compose("train", ["model=tiny-llama", "trainer=cpu", "model.device=cpu"]))


def test_multirun_over_two_layers_with_one_failing_job(tmp_path):
    """Two good layers and one out of range: the good jobs finish, the summary lists the failure."""
    proc = run_cli("fvtrain.extract", "-m", "debug=fast", "extract.layer=1,2,9",
                   f"paths.output_root={tmp_path}", check=False)
    assert proc.returncode != 0  # a failed job makes the sweep exit non-zero
    summaries = list(tmp_path.rglob("sweep_summary.json"))
    assert len(summaries) == 1
    jobs = json.loads(summaries[0].read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["completed", "completed", "failed"]
    assert "layer 9 is out of range" in jobs[2]["error"]
    for j in jobs[:2]:
        folder = Path(j["folder"])
        assert (folder / "metrics.json").is_file()
        assert "extract.layer=" in folder.name  # readable job folder names
    m1 = json.loads((Path(jobs[0]["folder"]) / "metrics.json").read_text())
    assert m1["layer"] == 1


def _fake_slurm(bin_dir: Path, out: Path) -> dict:
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"""#!/usr/bin/env bash
cp "${{@: -1}}" {out}/submission.sh
echo "Submitted batch job 4242"
""")
    # Report every array task as failed, so the launcher stops waiting at once.
    sacct = bin_dir / "sacct"
    sacct.write_text("""#!/usr/bin/env bash
echo "JobID|State|NodeList"
for i in 0 1 2; do echo "4242_$i|FAILED|node1"; done
""")
    srun = bin_dir / "srun"  # submitit only checks that it exists
    srun.write_text("#!/usr/bin/env bash\nexec \"$@\"\n")
    for f in (sbatch, sacct, srun):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_slurm_ddp_submission_script(tmp_path, monkeypatch):
    out = tmp_path / "captured"
    out.mkdir()
    env = _fake_slurm(tmp_path / "bin", out)
    monkeypatch.setenv("PATH", env["PATH"])
    proc = run_cli("fvtrain.extract", "-m", "launcher=slurm_ddp", "debug=fast", "extract.layer=1,2,3",
                   "+trainer.devices=4", "model.device=cuda", "hydra.launcher.partition=testpart",
                   "hydra.launcher.array_parallelism=2", "hydra.launcher.srun_args=['--cpu-bind=none']",
                   f"paths.output_root={tmp_path / 'runs'}", check=False, timeout=300)
    script = (out / "submission.sh").read_text()
    assert "#SBATCH --array=0-2%2" in script  # three jobs, at most two at once
    assert "#SBATCH --partition=testpart" in script
    assert "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --ntasks-per-node=4" in script
    assert "srun" in script and "--cpu-bind=none" in script
    assert "submitit.core._submit" in script
    assert proc.returncode != 0  # our fake cluster reports the tasks as failed


def test_compose_removes_its_unused_output_folder_at_exit(tmp_path):
    # compose() without output_dir makes a temporary run folder; an empty one must not outlive the
    # process (test suites and notebooks compose hundreds of configs), one written to must.
    import subprocess
    import sys

    code = ("from fvtrain.config import compose\n"
            "from pathlib import Path\n"
            "a = Path(compose('extract').paths.output_dir)\n"
            "b = Path(compose('extract').paths.output_dir)\n"
            "(b / 'kept.txt').write_text('x')\n"
            "print(a); print(b)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    unused, written = (Path(p) for p in out.stdout.split())
    assert unused != written
    assert not unused.exists()
    assert (written / "kept.txt").read_text() == "x"
    (written / "kept.txt").unlink()
    written.rmdir()
