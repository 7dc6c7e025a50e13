"""fvtrain-train configs compose and instantiate; bad init artifacts are refused before any model
work. Fast: Hydra compose API, no training."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from fvtrain import cli
from fvtrain.artifacts import save_vector


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(cli.config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_defaults_compose(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.model.name == "gemma3-270m" and cfg.ffv.init == "fv" and cfg.ffv.impl == "cached"
    assert cfg.ffv.loss.target == "first" and cfg.ffv.select == "per_relation"
    assert cfg.optim.optimizer._partial_ and cfg.trainer._target_ == "lightning.Trainer"
    assert list(cfg.logger) == ["csv"] and "model_checkpoint" in cfg.callbacks
    assert cfg.callbacks.model_checkpoint.monitor == "val/zero_shot/acc"
    # last.ckpt comes from its own unmonitored callback, so it is rewritten after every epoch
    assert cfg.callbacks.last_checkpoint.filename == "last" and cfg.callbacks.last_checkpoint.monitor is None
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    opt = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Adam)


@pytest.mark.parametrize("trainer, strategy", [("ddp_sim", "DDPStrategy"), ("default", "SingleDeviceStrategy")])
def test_trainer_groups(tmp_path, trainer, strategy):
    from fvtrain.training.trainer import build_trainer

    cfg = _cfg(tmp_path, f"trainer={trainer}", "logger=[]", "callbacks=none")
    t = build_trainer(cfg, [], [])
    assert type(t.strategy).__name__ == strategy
    if trainer == "ddp_sim":
        assert cfg.trainer.strategy == "ddp_spawn" and t.num_devices == 2
    assert t.logger is None


def test_logger_selection(tmp_path):
    from fvtrain.training.trainer import instantiate_callbacks, instantiate_loggers

    assert instantiate_loggers(_cfg(tmp_path, "logger=[]")) == []
    cfg = _cfg(tmp_path, "logger=[csv,tensorboard]")
    names = [type(lg).__name__ for lg in instantiate_loggers(cfg)]
    assert names == ["CSVLogger", "TensorBoardLogger"]
    many = _cfg(tmp_path, "logger=many")
    assert set(many.logger) == {"csv", "tensorboard", "wandb"}
    assert many.logger.wandb.mode in ("online", "offline", "disabled") and many.logger.wandb.offline is False
    cbs = [type(c).__name__ for c in instantiate_callbacks(cfg)]
    assert cbs == ["ModelCheckpoint", "ModelCheckpoint", "RichProgressBar", "LearningRateMonitor"]
    rnd = instantiate_callbacks(cfg, variant="random")[0]
    assert rnd.monitor == "random/val/zero_shot/acc" and rnd.dirpath.endswith("checkpoints/random")
    assert "LearningRateMonitor" not in [type(c).__name__ for c in instantiate_callbacks(cfg, has_logger=False)]


def test_optim_cosine_schedule_follows_epochs(tmp_path):
    cfg = _cfg(tmp_path, "optim=adam_cosine", "trainer.max_epochs=7")
    opt = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    sched = instantiate(cfg.optim.scheduler)(opt)
    assert sched.T_max == 7


@pytest.mark.parametrize("override, message", [
    ("ffv.init=ones", "ffv.init='ones': use one of fv, random, zeros"),
    ("ffv.loss.target=last", "ffv.loss.target='last'"),
    ("ffv.train_modes=[icl]", "ffv.train_modes"),
    ("ffv.layer=9", "layer 9 is out of range for tiny-llama with 4 layers"),
])
def test_bad_settings_are_refused_before_model_work(tmp_path, override, message):
    from fvtrain.train import train

    cfg = _cfg(tmp_path, "model=tiny-llama", "data.relations=[antonym]", override)
    with pytest.raises(cli.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        train(cfg)


def _fake_run(folder, relation, model_id, d_model, layer=1, split_hash=None):
    man = {"kind": "fv", "relation": relation, "model_id": model_id, "model_revision": None, "layer": layer}
    if split_hash:
        man["split_hash"] = split_hash
    save_vector(folder / "vectors", relation, torch.ones(d_model), man)
    return folder


@pytest.mark.parametrize("model_id, d_model, layer, message", [
    ("tiny-gpt2", 48, 1, "was made with model 'tiny-gpt2', but this run uses 'tiny-llama'"),
    ("tiny-llama", 40, 1, "has d_model 40 .* but tiny-llama has d_model 48; was it made for another model"),
    ("tiny-llama", 48, 2, "was extracted for layer 2, but ffv.layer=1"),
])
def test_init_artifact_of_another_model_is_refused(tmp_path, model_id, d_model, layer, message):
    from fvtrain.training.init import InitArtifactError
    from fvtrain.train import train

    run = _fake_run(tmp_path / "extract", "antonym", model_id, d_model, layer)
    cfg = _cfg(tmp_path / "out", "model=tiny-llama", "data.relations=[antonym]", f"ffv.fv_run={run}",
               "ffv.layer=1")
    with pytest.raises(InitArtifactError, match=message):
        train(cfg)


def test_init_artifact_of_another_split_or_relation_is_refused(tmp_path):
    from fvtrain.training.init import InitArtifactError
    from fvtrain.train import train

    run = _fake_run(tmp_path / "extract", "antonym", "tiny-llama", 48, split_hash="0" * 64)
    cfg = _cfg(tmp_path / "out", "model=tiny-llama", "data.relations=[antonym]", f"ffv.fv_run={run}")
    with pytest.raises(InitArtifactError, match="another split of 'antonym'"):
        train(cfg)
    cfg = _cfg(tmp_path / "out", "model=tiny-llama", "data.relations=[antonym,plural]", f"ffv.fv_run={run}")
    with pytest.raises(InitArtifactError, match="no vector for relation\\(s\\) plural"):
        train(cfg)


def test_user_data_zero_init_run_in_process(tmp_path):
    """data.path=<csv>, init=zeros without FVs: a whole (tiny, one-epoch) run in this process."""
    import json

    from fvtrain.artifacts import load_vector
    from fvtrain.train import train

    words = ["hot cold", "big small", "up down", "good bad", "fast slow", "open close", "light dark",
             "left right", "happy sad", "begin end", "quick lazy", "tree house", "cat dog", "car road"]
    rows = ["x,y,relation"] + [f"{w.split()[0]},{w.split()[1]},opposite" for w in words] + \
        [f"{w.split()[1]},{w.split()[0]},reverse" for w in words]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _cfg(tmp_path / "out", "model=tiny-llama", f"data.path={tmp_path / 'pairs.csv'}", "data.n_train=8",
                   "ffv.init=zeros", "ffv.compare_fv=false", "ffv.icl=false", "trainer.max_epochs=1",
                   "logger=[]", "callbacks=none", "ffv.eval_batch_size=4")
        metrics = train(cfg)
    finally:
        torch.set_num_threads(n)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["zero_shot_acc"]["methods"] == ["none", "ffv"] == metrics["zero_shot_acc"]["methods"]
    assert set(saved["zero_shot_acc"]["relations"]) == {"opposite", "reverse"}
    assert saved["init"] == "zeros" and saved["fv_source"] is None
    v, man = load_vector(tmp_path / "out" / "bank" / "reverse")
    assert man["init"] == "zeros" and v.norm() > 0 and man["split_hash"]
