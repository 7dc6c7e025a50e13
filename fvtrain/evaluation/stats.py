"""Bootstrap intervals for accuracies, and paired differences between methods on the same items.

Every accuracy fvtrain reports is a mean of per-item outcomes (0/1 correct, or a score). Where the
items belong to relations the reported number is the *macro* mean (the mean over relations of each
relation's accuracy), so the bootstrap is stratified: each resample redraws the items of every
relation from that relation (the relation set is fixed, as it is in the study), then takes the same
macro mean. Two methods evaluated on the same items share their resamples (a paired bootstrap), so
the interval of their difference is much narrower than the two intervals side by side suggest.

Intervals are percentile intervals from a seeded generator: the same outcomes and seed give the same
interval on every machine. ``ci`` values are ``[lo, hi]`` lists (JSON-ready), ``None`` where fewer
than two items make an interval meaningless.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

N_BOOT = 1000
LEVEL = 0.95


def _as_tensor(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu()


def _groups(groups: Sequence | torch.Tensor | None, n: int) -> list[torch.Tensor]:
    """Item indices of each group (in order of first appearance); one group when ``groups`` is None."""
    if groups is None:
        return [torch.arange(n)]
    keys = list(groups.tolist() if isinstance(groups, torch.Tensor) else groups)
    if len(keys) != n:
        raise ValueError(f"{len(keys)} group labels for {n} outcomes")
    order: dict = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    return [torch.tensor(v) for v in order.values()]


def macro_mean(values: Sequence[float] | torch.Tensor, groups: Sequence | torch.Tensor | None = None) -> float:
    """Mean over groups of each group's mean (the plain mean without groups)."""
    v = _as_tensor(values)
    if v.numel() == 0:
        return float("nan")
    return float(torch.stack([v[g].mean() for g in _groups(groups, len(v))]).mean())


def resample_means(values: torch.Tensor, groups: list[torch.Tensor], n_boot: int,
                   gen: torch.Generator) -> torch.Tensor:
    """``[n_boot]`` macro means of stratified resamples; ``values`` may be ``[n, m]`` (m methods on
    the same items, resampled together) and then the result is ``[n_boot, m]``."""
    v = values if values.dim() == 2 else values.unsqueeze(1)
    total = torch.zeros(n_boot, v.shape[1], dtype=torch.float64)
    for g in groups:
        draw = g[torch.randint(0, len(g), (n_boot, len(g)), generator=gen)]  # [n_boot, n_g]
        total += v[draw].mean(1)
    out = total / len(groups)
    return out if values.dim() == 2 else out[:, 0]


def percentile(samples: torch.Tensor, level: float = LEVEL) -> list[float] | None:
    s = samples[~torch.isnan(samples)]
    if s.numel() < 2:
        return None
    a = (1 - level) / 2
    q = torch.quantile(s, torch.tensor([a, 1 - a], dtype=s.dtype))
    return [float(q[0]), float(q[1])]


def mean_ci(values: Sequence[float] | torch.Tensor, groups: Sequence | torch.Tensor | None = None,
            n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> list[float] | None:
    """The percentile bootstrap interval of :func:`macro_mean` (``None`` under two items)."""
    v = _as_tensor(values)
    if v.numel() < 2 or n_boot <= 0:
        return None
    gen = torch.Generator().manual_seed(int(seed))
    return percentile(resample_means(v, _groups(groups, len(v)), n_boot, gen), level)


def accuracy(values: Sequence[float] | torch.Tensor, groups: Sequence | torch.Tensor | None = None,
             n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """``{"acc", "acc_ci", "n"}`` of per-item outcomes (macro over ``groups`` when given)."""
    v = _as_tensor(values)
    return {"acc": macro_mean(v, groups), "acc_ci": mean_ci(v, groups, n_boot, level, seed),
            "n": int(v.numel())}


def compare(outcomes: Mapping[str, Sequence[float] | torch.Tensor],
            groups: Sequence | torch.Tensor | None = None, pairs: Sequence[tuple[str, str]] = (),
            n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """Accuracy with interval for every method, and paired differences ``b - a`` for ``pairs``.

    ``outcomes[method]`` are per-item values over the *same* items in the same order. Returns
    ``{"methods": {m: {"acc", "acc_ci", "n"}}, "differences": {"b - a": {"diff", "ci",
    "excludes_zero"}}, "bootstrap": {...}}``.
    """
    names = list(outcomes)
    if not names:
        return {"methods": {}, "differences": {}, "bootstrap": _meta(n_boot, level, seed)}
    cols = [_as_tensor(outcomes[m]) for m in names]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise ValueError("paired outcomes must cover the same items: got lengths "
                         + ", ".join(f"{m}={len(c)}" for m, c in zip(names, cols)))
    v = torch.stack(cols, 1)
    gs = _groups(groups, n) if n else []
    boots = None
    if n >= 2 and n_boot > 0:
        boots = resample_means(v, gs, n_boot, torch.Generator().manual_seed(int(seed)))
    out: dict = {"methods": {}, "differences": {}, "bootstrap": _meta(n_boot, level, seed)}
    for j, m in enumerate(names):
        out["methods"][m] = {"acc": macro_mean(v[:, j], groups) if n else float("nan"),
                             "acc_ci": percentile(boots[:, j], level) if boots is not None else None,
                             "n": n}
    for a, b in pairs:
        if a not in outcomes or b not in outcomes:
            continue
        ia, ib = names.index(a), names.index(b)
        ci = percentile(boots[:, ib] - boots[:, ia], level) if boots is not None else None
        out["differences"][f"{b} - {a}"] = {
            "diff": out["methods"][b]["acc"] - out["methods"][a]["acc"], "ci": ci,
            "excludes_zero": bool(ci is not None and (ci[0] > 0 or ci[1] < 0))}
    return out


def _meta(n_boot: int, level: float, seed: int) -> dict:
    return {"n_boot": int(n_boot), "level": float(level), "seed": int(seed), "kind": "percentile, "
            "stratified by relation"}


def fmt(value: float | None, ci: Sequence[float] | None = None, digits: int = 3, compact: bool = False) -> str:
    """``0.612 [0.540, 0.680]`` (the value alone without an interval; ``-`` for none); ``compact``
    (console tables): ``0.61 [0.54,0.68]``."""
    if value is None or math.isnan(value):
        return "-"
    digits = 2 if compact else digits
    text = f"{value:.{digits}f}"
    if ci:
        text += f" [{ci[0]:.{digits}f}{',' if compact else ', '}{ci[1]:.{digits}f}]"
    return text


def fmt_diff(d: Mapping | None, digits: int = 3) -> str:
    """``+0.120 [+0.050, +0.190]*`` (``*``: the interval excludes 0)."""
    if not d or d.get("diff") is None:
        return "-"
    text = f"{d['diff']:+.{digits}f}"
    if d.get("ci"):
        text += f" [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}]"
    return text + ("*" if d.get("excludes_zero") else "")
