"""Presets (experiment/, debug/) win in every primary config, and the primary configs share groups.

Every primary config lists ``_self_`` first (the Lightning-Hydra template's convention), so nothing a
primary config says can silently override a preset. Presets are ``# @package _global_`` group configs:
Hydra merges them during composition, where struct mode does not apply (it only refuses unknown keys
in command-line overrides). So a preset can set keys that an entry point does not read, e.g.
``stages`` (relsim) in fvtrain-extract or ``trainer.max_epochs`` (debug/smoke) in fvtrain-eval; they
land in that config unused and harmless. We keep it that way rather than declaring such keys in every
entry point or restricting presets to some primary configs: every preset composes with every primary
config, and every key it sets has its value there.
"""

from __future__ import annotations

import re

import pytest
from omegaconf import DictConfig, OmegaConf

from fvtrain.cli import compose, config_dir

CONF = config_dir()
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
PRESETS = [(g, p.stem) for g in ("experiment", "debug") for p in sorted((CONF / g).glob("*.yaml"))]
RUNTIME = re.compile(r"\$\{(hydra|now):")  # values that depend on the Hydra run, not on the preset


def _package(text: str, group: str) -> str:
    m = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
    return m.group(1) if m else group.replace("/", ".")


def _option(group: str, option: str) -> DictConfig:
    """What ``group=option`` writes, at the root (its own ``defaults`` chain resolved, _self_ last
    unless listed): same-group parents like debug/smoke -> debug/fast and ``override /model: x``."""
    path = CONF / group / f"{option}.yaml"
    text = path.read_text()
    body = OmegaConf.load(path)
    defaults = list(body.pop("defaults", []) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    package = _package(text, group)
    out = OmegaConf.create()
    for d in defaults:
        if d == "_self_":
            own = body if package == "_global_" else OmegaConf.create({})
            if package != "_global_":
                OmegaConf.update(own, package, body, force_add=True)
            out = OmegaConf.merge(out, own)
        elif isinstance(d, str):
            out = OmegaConf.merge(out, _option(group, d))
        else:
            (key, value), = d.items()
            other = key.removeprefix("override ").strip().lstrip("/")
            out = OmegaConf.merge(out, _option(other, str(value)))
    return out


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _at(container: dict, key: str):
    node = container
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key} is missing"
        node = node[part]
    return node


def test_the_preset_reader_follows_defaults_chains():
    smoke = OmegaConf.to_container(_option("debug", "smoke"))
    assert smoke["extract"]["n_prompts"] == 4  # from debug/fast
    assert smoke["model"]["name"] == "tiny-llama"  # override /model: tiny-llama
    assert smoke["analogies"]["max_items"] == 12


@pytest.mark.parametrize("primary", PRIMARY)
def test_primary_configs_list_self_first(primary):
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / f"{primary}.yaml"))["defaults"]
    assert defaults[0] == "_self_", f"conf/{primary}.yaml: _self_ must come first in defaults"


@pytest.mark.parametrize("primary", PRIMARY)
@pytest.mark.parametrize("group,preset", PRESETS)
def test_every_preset_wins_in_every_primary_config(primary, group, preset, tmp_path):
    cfg = compose(primary, [f"{group}={preset}"], output_dir=tmp_path)
    raw = OmegaConf.to_container(cfg, resolve=False)
    expected = OmegaConf.to_container(_option(group, preset), resolve=False)
    checked = 0
    for key, value in _leaves(expected):
        if isinstance(value, str) and RUNTIME.search(value):
            continue
        assert _at(raw, key) == value, f"{primary} {group}={preset}: {key}"
        checked += 1
    assert checked
    OmegaConf.to_container(cfg, resolve=True)


# The pipeline's CPU budget comes from group options (data=builtin12, extract=cpu, cfv=cpu) in its
# defaults list, so it holds for `fvtrain` alone and under presets that do not set those keys, while the
# stage entry points keep their own defaults.
TWELVE = ["antonym", "synonym", "hypernym", "part_whole", "object_function", "plural", "past_tense",
          "comparative", "agent_noun", "country_capital", "country_currency", "animal_young"]


def _budget(cfg):
    return (cfg.data.relations, cfg.extract.n_prompts, cfg.extract.n_corrupt, cfg.extract.layer_sweep,
            cfg.compose.batch_size, cfg.compose.max_rows, cfg.alignment.batch_size,
            cfg.alignment.max_rows)


def test_the_pipeline_keeps_its_cpu_budget(tmp_path):
    cfg = compose("pipeline", output_dir=tmp_path)
    assert _budget(cfg) == (TWELVE, 20, 10, True, 64, 256, 16, 64)
    assert cfg.stages == ["extract", "train", "compose", "eval", "report"]
    assert cfg.alignment.held_out is True

    relsim = compose("pipeline", ["experiment=relsim"], output_dir=tmp_path)
    assert relsim.data.path == "../shared/data/semeval2012_task2" and len(relsim.data.relations) == 20
    assert _budget(relsim)[1:] == (20, 10, True, 64, 256, 16, 64)
    assert relsim.judgments.path == "../shared/data/relsim_chen2017/relsim"
    assert relsim.stages == ["extract", "train", "eval", "report"]

    llama = compose("pipeline", ["experiment=llama_paper"], output_dir=tmp_path)
    assert _budget(llama) == (TWELVE, 20, 10, True, 64, 256, 16, 64) and llama.extract.layer == 5


def test_entry_points_keep_their_own_defaults(tmp_path):
    assert compose("extract", output_dir=tmp_path).extract.n_prompts == 100
    assert compose("extract", output_dir=tmp_path).data.relations is None
    c = compose("compose", output_dir=tmp_path).compose
    assert (c.batch_size, c.max_rows) == (32, 128)


def test_pipeline_and_entry_points_share_the_stage_settings(tmp_path):
    pipe = compose("pipeline", output_dir=tmp_path)
    for primary, keys in [("compose", ["basis", "analogies"]),
                          ("eval", ["vectors", "judgments", "alignment", "decoding"])]:
        cfg = compose(primary, output_dir=tmp_path)
        for k in keys:
            assert pipe[k] == cfg[k], k
    # Same compose.* keys; only the pipeline's batch sizes differ (cfv=cpu).
    assert {*compose("compose", output_dir=tmp_path).compose} == {*pipe.compose}


@pytest.mark.parametrize("primary,preset,key,value", [
    ("eval", "experiment=relsim", "judgments.path", "../shared/data/relsim_chen2017/relsim"),
    ("compose", "debug=smoke", "analogies.max_items", 12),
    ("compose", "debug=smoke", "analogies.relations", ["antonym", "country_capital"]),
])
def test_presets_that_were_dropped(primary, preset, key, value, tmp_path):
    cfg = compose(primary, [preset], output_dir=tmp_path)
    got = OmegaConf.select(cfg, key)
    assert (OmegaConf.to_container(got) if not isinstance(got, (str, int)) else got) == value
