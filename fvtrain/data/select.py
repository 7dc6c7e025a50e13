"""The Hydra ``data`` node mapped onto the readers: read a path, select relations."""

from __future__ import annotations

from typing import Any

from fvtrain.errors import ConfigError


def name_list(value: Any) -> list[str] | None:
    """A config list of names, also given as one comma-separated string (``a,b``); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def load_relations(data_cfg: Any):
    """Read ``data.path`` (format detected or ``data.format``), or the union of ``data.sources``
    (:mod:`fvtrain.data.sources`), select ``data.relations`` and cap each at ``data.max_pairs``."""
    from fvtrain.data.readers import read

    relations = data_cfg.get("relations")
    if relations is not None and not isinstance(relations, str):
        relations = list(relations)
    where = data_cfg.path
    if data_cfg.get("sources"):
        from fvtrain.data.sources import read_sources

        try:
            ds = read_sources(list(data_cfg.sources), data_cfg.get("max_pairs"), int(data_cfg.get("sample_seed", 0)),
                              float(data_cfg.get("dedupe_overlap", 0.5))).select(relations)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        where = "data.sources"
    else:
        ds = read(data_cfg.path, data_cfg.get("format"), relations)
        if data_cfg.get("max_pairs"):
            from fvtrain.data.sources import sample_pairs

            ds.relations = {n: sample_pairs(r, int(data_cfg.max_pairs), int(data_cfg.get("sample_seed", 0)))
                            for n, r in ds.relations.items()}
    if not ds.relations:
        raise ConfigError(f"{where}: no relations to work on (data.relations={relations})")
    check_relation_names(ds.relations, where)
    return ds


def check_relation_names(names, source) -> None:
    """Every relation name must make a file name of its own (vectors, AIE maps are named after it)."""
    from fvtrain.artifacts import UnsafeNameError, check_names

    try:
        check_names(list(names))
    except UnsafeNameError as err:
        raise ConfigError(f"{source}: {err}") from None
