"""Prompt templates and tokenised prompt batches.

A template such as ``"Q: {x}\\nA: {y}\\n\\n"`` defines three strings:

* the *query* for a word ``x``: everything before ``{y}``, without its trailing space
  (``"Q: x\\nA:"``);
* the *target* for an answer ``y``: ``" " + y`` (the space that separated them);
* a *demonstration*: the template filled with both words.

Prompts are left-padded so that every example's last real token sits in the final column, and
targets are right-padded after them. That layout puts the logits we need (last prompt position
through the second-to-last target token) into one contiguous column range shared by the whole
batch, so the model never computes a 262,144-wide vocabulary row it does not use.

Every prompt is tokenised by :func:`encode_prompt`, which applies the ``prompt.bos`` policy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

DEFAULT_TEMPLATE = "Q: {x}\nA: {y}\n\n"


@dataclass(frozen=True)
class PromptTemplate:
    """A demonstration template with ``{x}`` and ``{y}`` placeholders."""

    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        t = self.template
        if t.count("{x}") != 1 or t.count("{y}") != 1 or t.index("{x}") > t.index("{y}"):
            raise ValueError(
                f"prompt template {t!r} must contain '{{x}}' once followed by '{{y}}' once, "
                "e.g. 'Q: {x}\\nA: {y}\\n\\n'"
            )

    @property
    def _head(self) -> str:
        return self.template[: self.template.index("{y}")]

    @property
    def _tail(self) -> str:
        return self.template[self.template.index("{y}") + 3 :]

    @property
    def separator(self) -> str:
        """The whitespace between the query and the answer (moved into the target)."""
        head = self._head
        return head[len(head.rstrip()) :]

    def query(self, x: str) -> str:
        return self._head.rstrip().replace("{x}", x)

    def target(self, y: str) -> str:
        return self.separator + y

    def demo(self, x: str, y: str) -> str:
        return self.query(x) + self.target(y) + self._tail


def _check_word(word: str, what: str) -> None:
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"empty {what} {word!r}: every pair needs a non-empty input and answer")


def zero_shot(template: PromptTemplate, x: str) -> str:
    """``Q: x\\nA:``"""
    _check_word(x, "word")
    return template.query(x)


def icl(template: PromptTemplate, demos: Sequence[tuple[str, str]], x: str) -> str:
    """n demonstrations followed by the query."""
    _check_word(x, "word")
    return "".join(template.demo(dx, dy) for dx, dy in demos) + template.query(x)


def shuffled_icl(
    template: PromptTemplate,
    demos: Sequence[tuple[str, str]],
    x: str,
    rng: random.Random,
) -> str:
    """Demonstrations with their answers permuted: the format without the relation."""
    ys = [dy for _, dy in demos]
    rng.shuffle(ys)
    return icl(template, [(dx, y) for (dx, _), y in zip(demos, ys)], x)


@dataclass
class PromptBatch:
    """Tokenised prompts (left-padded) with their targets (right-padded after them).

    ``input_ids`` is ``[B, P + M - 1]``: prompt columns ``0..P-1`` (last real prompt token in
    column ``P-1`` for every row), then target tokens except the last. ``target_ids[b, j]`` is
    predicted at column ``P - 1 + j``. ``first_ids[b]`` lists the first token of every accepted
    answer of example b (the first entry is the scored target).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    first_ids: list[list[int]]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_ids(self) -> torch.Tensor:
        return self.input_ids[:, : self.prompt_len]

    @property
    def prompt_mask(self) -> torch.Tensor:
        return self.attention_mask[:, : self.prompt_len]

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.prompt_len,
            self.target_ids.to(device),
            self.target_mask.to(device),
            self.first_ids,
            self.meta,
        )

    def first_token_matrix(self) -> torch.Tensor:
        """``[B, K]`` first-token ids of every accepted answer, padded with -1."""
        k = max(len(f) for f in self.first_ids)
        out = torch.full((len(self.first_ids), k), -1, dtype=torch.long)
        for i, f in enumerate(self.first_ids):
            out[i, : len(f)] = torch.tensor(f, dtype=torch.long)
        return out.to(self.input_ids.device)


def pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def encode_target(tokenizer, template: PromptTemplate, answer: str) -> list[int]:
    """Token ids of ``template.target(answer)``; an answer that encodes to nothing is an error."""
    _check_word(answer, "answer")
    ids = tokenizer(template.target(answer), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(
            f"the answer {answer!r} encodes to no token with this tokenizer; "
            "remove the pair or use a model whose vocabulary covers it"
        )
    return list(ids)


BOS_POLICIES = ("auto", "never", "always")
_BOS_ATTR = "fvtrain_prompt_bos"


def set_bos_policy(tokenizer, policy: str) -> None:
    """Make every prompt encoded with ``tokenizer`` follow ``policy`` (the ``prompt.bos`` option).

    The policy travels with the tokenizer (it survives pickling, e.g. into ``ddp_spawn`` workers),
    so every stage that encodes prompts with the model's tokenizer applies the same one.
    """
    if policy not in BOS_POLICIES:
        raise ValueError(f"prompt.bos={policy!r}: it must be one of {', '.join(BOS_POLICIES)}")
    setattr(tokenizer, _BOS_ATTR, policy)


def bos_policy(tokenizer) -> str:
    """The tokenizer's ``prompt.bos`` policy (``auto`` unless :func:`set_bos_policy` set another)."""
    return getattr(tokenizer, _BOS_ATTR, "auto")


def encode_prompt(tokenizer, prompt: str, bos: str | None = None) -> list[int]:
    """Token ids of a prompt: the tokenizer's own special tokens, then the BOS policy.

    ``bos`` (default: :func:`bos_policy` of the tokenizer): ``auto`` prepends ``bos_token_id``
    when the tokenizer put none first (GPT-2, GPT-J, NeoX add no BOS; Todd et al.'s code prepends
    it there), ``never`` keeps the tokenizer's output as is, ``always`` is ``auto`` but refuses a
    tokenizer that has no BOS token. A tokenizer that adds its own BOS (Gemma, Llama) gets the
    same ids under every policy: a BOS is never doubled.
    """
    policy = bos_policy(tokenizer) if bos is None else bos
    if policy not in BOS_POLICIES:
        raise ValueError(f"prompt.bos={policy!r}: it must be one of {', '.join(BOS_POLICIES)}")
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no token")
    bos_id = tokenizer.bos_token_id
    if policy == "always" and bos_id is None:
        raise ValueError("prompt.bos=always, but this tokenizer has no BOS token; use prompt.bos=auto")
    if policy != "never" and bos_id is not None and ids[0] != bos_id:
        ids.insert(0, int(bos_id))
    return ids


def make_batch(
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str | Sequence[str]],
    template: PromptTemplate | None = None,
    meta: dict | None = None,
) -> PromptBatch:
    """Tokenise prompts and targets into one :class:`PromptBatch`.

    ``answers[i]`` is one answer or a list of accepted answers; the first one is the scored
    target, every accepted answer's first token counts as correct for accuracy.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        raise ValueError("cannot build a batch from zero prompts")
    template = template or PromptTemplate()
    p_ids = [encode_prompt(tokenizer, p) for p in prompts]
    t_ids, firsts = [], []
    for a in answers:
        alts = [a] if isinstance(a, str) else list(a)
        if not alts:
            raise ValueError("an example has no accepted answer")
        enc = [encode_target(tokenizer, template, alt) for alt in alts]
        t_ids.append(enc[0])
        firsts.append(list(dict.fromkeys(e[0] for e in enc)))
    pid = pad_id(tokenizer)
    P = max(len(p) for p in p_ids)
    M = max(len(t) for t in t_ids)
    B = len(p_ids)
    input_ids = torch.full((B, P + M - 1), pid, dtype=torch.long)
    attn = torch.zeros((B, P + M - 1), dtype=torch.long)
    target_ids = torch.full((B, M), pid, dtype=torch.long)
    target_mask = torch.zeros((B, M), dtype=torch.long)
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        input_ids[i, P - len(p) : P] = torch.tensor(p)
        attn[i, P - len(p) : P] = 1
        if len(t) > 1:
            input_ids[i, P : P + len(t) - 1] = torch.tensor(t[:-1])
            attn[i, P : P + len(t) - 1] = 1
        target_ids[i, : len(t)] = torch.tensor(t)
        target_mask[i, : len(t)] = 1
    return PromptBatch(input_ids, attn, P, target_ids, target_mask, firsts, dict(meta or {}))


def sample_demos(pool: Sequence, query_x: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` demonstrations ``(x, first answer)`` drawn from ``pool``, never the query's own pair.

    The one recipe for demonstrations: extraction, training, evaluation and the benchmarks all call
    it, so the same seed gives the same prompts everywhere.
    """
    cands = [p for p in pool if p.x != query_x]
    if len(cands) < n:
        raise ValueError(
            f"{n}-shot prompts need at least {n} demonstration pairs besides the query, but only "
            f"{len(cands)} are available; lower n_shots or add pairs"
        )
    return [(p.x, p.answers[0]) for p in rng.sample(cands, n)]


def sample_icl_prompts(
    template: PromptTemplate,
    demo_pool: Sequence,
    queries: Sequence,
    n_shots: int,
    rng: random.Random,
    shuffled: bool = False,
) -> list[tuple[str, tuple[str, ...]]]:
    """One ICL prompt per query: ``n_shots`` demonstrations from ``demo_pool``, never the query.

    Pairs are objects with ``.x`` and ``.answers`` (a demonstration shows the first answer).
    Returns ``(prompt, accepted answers)`` tuples; ``shuffled`` permutes demonstration answers.
    """
    out = []
    for q in queries:
        demos = sample_demos(demo_pool, q.x, n_shots, rng)
        prompt = shuffled_icl(template, demos, q.x, rng) if shuffled else icl(template, demos, q.x)
        out.append((prompt, tuple(q.answers)))
    return out
