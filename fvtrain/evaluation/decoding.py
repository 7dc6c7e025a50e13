"""Decoding vectors through the logit lens (DESIGN step 9).

A vector is read as if it were the residual stream at the last layer: the model's final norm,
then the unembedding (``FrozenLM.adapter``). For each vector this gives its top-k tokens and the
rank of every word that names its relation ("opposite" for antonyms, "capital" for
country-capital): the rank of the word's first token among all vocabulary entries (1 = the top
token), best over the spellings ``" word"``, ``"word"`` and ``" Word"``. The best rank over a
relation's words is the headline number, FV versus FFV.

A first token says little when words share it (a byte-level tokenizer splits "opposite" into
" o", "pp", ...: a vector that pushes " o" "decodes" every o-word). So every word also gets a
*whole-word* rank: only spellings that are one token are ranked (the rank is then that of the whole
word), and a word with no single-token spelling is skipped and counted (``n_skipped``), never
scored by a prefix. Whole-word ranks are summarised apart (``whole_word``), over the relations with
at least one ranked word for every kind. (Scoring multi-token words by the product of their tokens'
lens probabilities was left out: the lens reads one position, so later tokens have no context.)

Relation words come from, in order: a user file (``{"relation": ["word", ...]}``), the built-in
lists (``fvtrain/data/builtin/relation_words.json``), and, for relations that carry a title or a
definition (SemEval-2012 subtypes: "CLASS-INCLUSION: Taxonomic", "Y is a kind/type/instance of
X"), the content words of those.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch

from fvtrain.errors import ConfigError
from fvtrain.evaluation.relation import first_token_degeneracy, warn_if_degenerate

log = logging.getLogger(__name__)

STOPWORDS = frozenset("""
a an and are as at be been being by can for from has have in into is it its may of on or that the
their them then there these they this to was were which with without x y z one ones other another
something someone thing things item items used use typically often usually
""".split())


class DecodingError(ConfigError):
    """A relation-words file that cannot be used."""


def words_from_text(text: str, min_len: int = 3) -> list[str]:
    """Lower-cased content words of a title or definition (``CLASS-INCLUSION`` -> class, inclusion)."""
    out = []
    for w in re.findall(r"[A-Za-z]+", text or ""):
        w = w.lower()
        if len(w) >= min_len and w not in STOPWORDS and w not in out:
            out.append(w)
    return out


def load_words_file(path: str | Path) -> dict[str, list[str]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DecodingError(f"decoding.words={str(path)!r} is not a file; give a JSON file "
                            '{"relation": ["word", ...], ...}')
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DecodingError(f"{p}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) and w.strip() for w in v)
        for k, v in data.items()
    ):
        raise DecodingError(f'{p}: expected an object {{"relation": ["word", ...], ...}}')
    return {k: [w.strip() for w in v] for k, v in data.items()}


def relation_words(
    names: Sequence[str],
    sources: Mapping[str, Mapping] | None = None,
    user: Mapping[str, Sequence[str]] | None = None,
    builtin: bool = True,
    derive: bool = True,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Words naming each relation and where they came from (``user``/``builtin``/``title``).

    ``sources[name]`` is the relation's ``source`` metadata (or a vector manifest) with optional
    ``title``/``definition``/``class``/``subtype``. A relation with no words is left out.
    """
    from fvtrain.data.builtin_sets import load_relation_words

    table = load_relation_words() if builtin else {}
    words: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for n in names:
        if user and n in user:
            words[n], origin[n] = list(user[n]), "user"
        elif n in table:
            words[n], origin[n] = list(table[n]), "builtin"
        elif derive and sources and n in sources:
            s = sources[n] or {}
            text = " ".join(str(s.get(k) or "") for k in ("title", "class", "subtype", "definition"))
            derived = words_from_text(text)
            if derived:
                words[n], origin[n] = derived, "title"
    return words, origin


def word_token_ids(tokenizer, word: str) -> dict[str, int]:
    """First token id of each spelling of ``word`` (``" word"``, ``"word"``, ``" Word"``)."""
    out: dict[str, int] = {}
    for text in (" " + word, word, " " + word[:1].upper() + word[1:]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            out.setdefault(text, int(ids[0]))
    return out


def single_token_ids(tokenizer, word: str) -> dict[str, int]:
    """The spellings of ``word`` (as :func:`word_token_ids`) that are exactly one token, with its id."""
    out: dict[str, int] = {}
    for text in (" " + word, word, " " + word[:1].upper() + word[1:]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.setdefault(text, int(ids[0]))
    return out


def lens_logits(lm, vector: torch.Tensor) -> torch.Tensor:
    """``[vocab]`` logit-lens logits of a vector (:meth:`FrozenLM.lens_logits`)."""
    return lm.lens_logits(vector)


def rank_of(logits: torch.Tensor, token_id: int) -> int:
    """1 + the number of tokens with a strictly higher logit."""
    return int((logits > logits[token_id]).sum()) + 1


def decode_vector(lm, vector: torch.Tensor, words: Sequence[str] = (), k: int = 10) -> dict:
    """Top-k tokens and the rank of every relation word (its best spelling): by its first token
    (``rank``, ``best_rank``) and as a whole word (``whole_rank``, ``best_whole_rank``: single-token
    spellings only; ``n_skipped`` words have none)."""
    logits = lens_logits(lm, vector)
    V = logits.numel()
    top = logits.topk(min(k, V))
    tok = lm.tokenizer
    out = {
        "top": [{"token": tok.decode([int(i)]), "id": int(i), "logit": float(v)}
                for v, i in zip(top.values, top.indices)],
        "vocab_size": V,
        "words": {},
    }
    best = best_whole = None
    skipped: list[str] = []  # words with no single-token spelling: no whole-word rank
    for w in words:
        ids = word_token_ids(tok, w)
        if not ids:
            out["words"][w] = None
            continue
        spell, r = min(((s, rank_of(logits, i)) for s, i in ids.items()), key=lambda t: t[1])
        n_tok = len(tok(" " + w, add_special_tokens=False)["input_ids"])
        out["words"][w] = {"rank": r, "spelling": spell, "token": tok.decode([ids[spell]]),
                           "multi_token": n_tok > 1}
        if best is None or r < best[1]:
            best = (w, r)
        single = single_token_ids(tok, w)
        if single:
            wspell, wr = min(((s, rank_of(logits, i)) for s, i in single.items()), key=lambda t: t[1])
            out["words"][w].update(whole_rank=wr, whole_spelling=wspell)
            if best_whole is None or wr < best_whole[1]:
                best_whole = (w, wr)
        else:
            out["words"][w]["whole_rank"] = None
            skipped.append(w)
    out["best_word"], out["best_rank"] = (best if best else (None, None))
    out["best_whole_word"], out["best_whole_rank"] = (best_whole if best_whole else (None, None))
    out["n_skipped"], out["skipped"] = len(skipped), skipped
    return out


def summarise_ranks(ranks: Sequence[int | None], vocab_size: int) -> dict:
    """Median best rank, mean reciprocal rank, share within the top 10/100, mean log10 rank."""
    rs = [r for r in ranks if r is not None]
    if not rs:
        return {"n": 0, "median_rank": None, "mrr": None, "top10": None, "top100": None,
                "mean_log10_rank": None, "chance_median_rank": None}
    t = torch.tensor(rs, dtype=torch.float64)
    return {
        "n": len(rs),
        "median_rank": float(t.median()),
        "mrr": float((1.0 / t).mean()),
        "top10": float((t <= 10).double().mean()),
        "top100": float((t <= 100).double().mean()),
        "mean_log10_rank": float(t.log10().mean()),
        "chance_median_rank": vocab_size / 2,
    }


def decode_sets(
    lm,
    vectors: Mapping[str, Mapping[str, torch.Tensor]],
    words: Mapping[str, Sequence[str]],
    k: int = 10,
) -> dict:
    """Decode every ``vectors[kind][relation]``.

    Returns ``{"relations": {rel: {"words": [...], kind: decode_vector(...)}}, "summary": {kind:
    summarise_ranks(...)}, "no_words": [relations without words]}``. The summary is over the
    relations that have words and a vector of every kind (so the kinds are compared on the same
    relations).
    """
    kinds = list(vectors)
    names = list(dict.fromkeys(n for v in vectors.values() for n in v))
    rels: dict[str, dict] = {}
    V = None
    for n in names:
        entry: dict = {"words": list(words.get(n, []))}
        for kind in kinds:
            if n in vectors[kind]:
                d = decode_vector(lm, vectors[kind][n], entry["words"], k)
                V = d["vocab_size"]
                entry[kind] = d
        rels[n] = entry
    common = [n for n in names if words.get(n) and all(kind in rels[n] for kind in kinds)]
    summary = {kind: summarise_ranks([rels[n][kind]["best_rank"] for n in common], V or 0)
               for kind in kinds}
    whole = [n for n in common if all(rels[n][kind]["best_whole_rank"] is not None for kind in kinds)]
    all_words = list(dict.fromkeys(w for n in common for w in words[n]))
    skipped = [w for w in all_words if not single_token_ids(lm.tokenizer, w)]
    degeneracy = first_token_degeneracy(lm.tokenizer, [[w] for w in all_words])
    if warn_if_degenerate(degeneracy, "relation-word decoding", log, instead="the whole-word ranks"):
        log.warning("relation-word decoding: %d of %d relation word(s) are not one token and have no "
                    "whole-word rank", len(skipped), len(all_words))
    whole_word = {
        "summary": {kind: summarise_ranks([rels[n][kind]["best_whole_rank"] for n in whole], V or 0)
                    for kind in kinds},
        "compared_on": whole, "n_words": len(all_words), "n_skipped": len(skipped), "skipped": skipped,
        "first_token_degeneracy": degeneracy,
    }
    return {"k": k, "relations": rels, "summary": summary, "compared_on": common,
            "no_words": [n for n in names if not words.get(n)], "whole_word": whole_word}


def table_rows(decoding: Mapping, kinds: Sequence[str], n_top: int = 5) -> list[list]:
    """Rows ``relation | kind top tokens | kind best rank (word) | ...`` for a summary table."""
    rows = []
    for n, entry in decoding["relations"].items():
        row = [n]
        for kind in kinds:
            d = entry.get(kind)
            if d is None:
                row += ["-", "-"]
                continue
            row.append(" ".join(repr(t["token"])[1:-1].strip() or "␣" for t in d["top"][:n_top]))
            row.append("-" if d["best_rank"] is None else f"{d['best_rank']} ({d['best_word']})")
        rows.append(row)
    return rows


def log_rank(r: int | None) -> float:
    return float("nan") if r is None else math.log10(r)
