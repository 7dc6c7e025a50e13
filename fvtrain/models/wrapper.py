"""The frozen language model and the only object that touches its internals.

:class:`FrozenLM` is deliberately *not* an ``nn.Module``: a LightningModule can hold it as an
attribute without the frozen weights entering its state dict, optimiser or checkpoints.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from fvtrain.models import hooks, shared_prefix
from fvtrain.models.adapters import Adapter
from fvtrain.models.source import ModelSource
from fvtrain.prompts import PromptBatch, PromptTemplate, encode_prompt, make_batch


class SelfCheckError(RuntimeError):
    """A start-up check found that hooks do not reach the model."""


@dataclass
class LMOutput:
    """What :meth:`FrozenLM.forward` returns: the kept columns' logits and the cache (if asked)."""

    logits: torch.Tensor  # [B, K, vocab]
    cache: object = None


VOCAB_CHUNK = 1024  # tokens per unembedding block in FrozenLM.vocab_stats (benchmarks/aie.py: 1024 is fastest)
# max_rows="auto" (FrozenLM.rows_that_fit): the share of free memory a batch of rows may take, and
# its bounds (multiples of MIN_ROWS; on a CPU the fast AIE gains little beyond 2,048 rows).
ROW_MEMORY_SHARE = 0.25
MIN_ROWS, CPU_MAX_ROWS, GPU_MAX_ROWS = 16, 2048, 16384


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's own count, or the memory the OS can still give."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 4 << 30  # unknown: assume a small laptop's


@dataclass
class VocabStats:
    """What most evaluations read from a row's logits (:meth:`FrozenLM.vocab_stats`)."""

    lse: torch.Tensor  # [R] log of the softmax normaliser (float32)
    picked: torch.Tensor | None  # [R, K] logits of the requested token ids (float32)
    argmax: torch.Tensor | None  # [R] the top token (None when not asked for)

    def logprob(self) -> torch.Tensor:
        """``[R, K]`` log-probabilities of the requested tokens."""
        return self.picked - self.lse.unsqueeze(1)


@dataclass
class Scores:
    """Per-example scores of a :class:`PromptBatch`."""

    first_prob: torch.Tensor  # P(first target token)
    first_logprob: torch.Tensor
    target_logprob: torch.Tensor  # sum of log P over all target tokens
    correct: torch.Tensor  # top-1 at the last prompt position is the first token of an accepted answer
    argmax: torch.Tensor


def position_ids_for(attention_mask: torch.Tensor, n_new: int | None = None) -> torch.Tensor:
    """Positions that ignore left padding (a plain forward would count the pads)."""
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos if n_new is None else pos[:, -n_new:]


class FrozenLM:
    """A causal LM in eval mode with every parameter frozen, plus its tokenizer and geometry."""

    def __init__(self, model, tokenizer, source: ModelSource | None = None) -> None:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source or ModelSource(getattr(model.config, "_name_or_path", "model"), "object")
        self.adapter = Adapter(model)
        self._blocks_return_tuple = False  # learnt by last_token_inputs, used by start_layer

    # -- geometry shortcuts ----------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    @property
    def n_heads(self) -> int:
        return self.adapter.n_heads

    @property
    def head_dim(self) -> int:
        return self.adapter.head_dim

    @property
    def d_model(self) -> int:
        return self.adapter.d_model

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def model_id(self) -> str:
        return self.source.name

    def describe(self) -> dict:
        return {**self.source.to_dict(), **self.adapter.describe()}

    def check_layer(self, layer: int) -> int:
        return self.adapter.check_layer(layer)

    def default_layer(self) -> int:
        """About a third of the way up (GPT-J: 9 of 28), the design's default injection layer."""
        return max(0, round(self.n_layers / 3))

    def rows_that_fit(self, tokens: int, free_bytes: int | None = None, share: float = ROW_MEMORY_SHARE) -> int:
        """Last-token rows per forward (``max_rows="auto"``) whose working memory fits in
        ``share`` of the device's free memory, with prompts of ``tokens`` tokens.

        A row holds its keys and values in every layer (with a copy of the prompt's unless
        attention shares the prefix, :mod:`.shared_prefix`), one block's activations at a time,
        and a block of vocabulary logits. At most :data:`CPU_MAX_ROWS` on a CPU, where more rows
        gain little; on a GPU the batch grows until memory is the limit, which keeps its kernels
        large.
        """
        if free_bytes is None:
            free_bytes = free_memory(self.device)
        a, elem = self.adapter, torch.finfo(self.dtype).bits // 8
        kv_tokens = 1 if shared_prefix.available(self.model) else int(tokens) + 1
        kv = a.n_layers * 2 * a.n_kv_heads * kv_tokens * a.head_dim * elem
        block = (a.n_heads * a.head_dim + 3 * a.d_intermediate + 4 * a.d_model) * elem
        per_row = kv + block + 2 * VOCAB_CHUNK * 4
        rows = int(free_bytes * share) // per_row
        cap = CPU_MAX_ROWS if self.device.type == "cpu" else GPU_MAX_ROWS
        return max(MIN_ROWS, min(cap, rows // MIN_ROWS * MIN_ROWS))

    def resolve_rows(self, max_rows: int | str, tokens: int) -> int:
        """A ``max_rows`` setting as a number: ``"auto"`` is :meth:`rows_that_fit` for ``tokens``."""
        return self.rows_that_fit(tokens) if str(max_rows) == "auto" else int(max_rows)

    def to(self, device) -> "FrozenLM":
        self.model.to(device)
        return self

    # -- forward passes --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache=None,
        logits_to_keep: int | torch.Tensor = 1,
        use_cache: bool = False,
    ) -> "LMOutput":
        """One forward with padding-aware positions; ``attention_mask`` covers cache + input.

        ``cache`` is a prefix :class:`~transformers.DynamicCache` (transformers' ``cache``
        argument, formerly ``past_key_values``). ``logits_to_keep``: the last n columns (0: all)
        or a tensor of column indices, as in transformers."""
        out = self.body(input_ids, attention_mask, cache=cache, use_cache=use_cache)
        return LMOutput(self._kept_logits(out.last_hidden_state, logits_to_keep), out.cache)

    def _kept_logits(self, hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        """``[B, K, vocab]`` logits of the kept columns, unembedded as one ``[B * K, d]`` matrix.

        transformers' causal-LM heads unembed a strided slice of the hidden states, which matmul
        turns into a batched product that rereads the whole unembedding once per prompt: 4-7x
        slower on a 262k vocabulary (README, `fvtrain`: "Where the time goes")."""
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep.to(hidden.device)]
        elif logits_to_keep:
            hidden = hidden[:, -int(logits_to_keep):]
        B, K, d = hidden.shape
        return self.logits_of(hidden.reshape(B * K, d)).view(B, K, -1)

    def body(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache=None,
        use_cache: bool = False,
    ):
        """The decoder stack without the unembedding; ``last_hidden_state`` is after the final
        norm, so :meth:`logits_of` turns it into logits."""
        dev = self.device
        attention_mask = attention_mask.to(dev)
        return self.model.base_model(
            input_ids=input_ids.to(dev),
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask, input_ids.shape[1]),
            **_cache_kwargs(cache, use_cache),
        )

    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of final-normed hidden states (what :meth:`body` returns)."""
        return self.adapter.logits(hidden)

    def vocab_stats(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None,
                    chunk: int = VOCAB_CHUNK, argmax: bool = True) -> "VocabStats":
        """Log-normaliser, logits of ``token_ids`` (``[R, K]``) and argmax of the logits of
        final-normed hidden states ``[R, d]``, without ever holding ``[R, vocab]``.

        The vocabulary is unembedded ``chunk`` tokens at a time and reduced at once (a running
        max and sum of exponentials), so each block of logits is still in cache when it is read:
        on a 262k vocabulary about 1.3x faster than logits then softmax, and ``chunk / vocab`` of
        the memory. The same numbers as :meth:`logits_of` followed by ``logsumexp``/``gather``/
        ``argmax`` (ties go to the lowest token id, as ``argmax`` does), in float32. Without
        ``argmax`` the top token is not tracked (``.argmax`` is None): a plain max is cheaper.
        """
        head = self.adapter.unembedding
        weight, bias = head.weight, getattr(head, "bias", None)
        if weight.device.type == "meta":  # offloaded (device_map): only the module's own call loads it
            logits = self.logits_of(hidden).float()
            picked = None if token_ids is None else logits.gather(1, token_ids.to(logits.device))
            return VocabStats(logits.logsumexp(-1), picked, logits.argmax(-1) if argmax else None)
        hidden = hidden.to(weight.device)  # device_map may put the head on another GPU than the last block
        cap = self.adapter.logit_softcap
        R = hidden.shape[0]
        dev = hidden.device
        run_max = torch.full((R,), float("-inf"), device=dev)
        run_sum = torch.zeros(R, device=dev)
        best = torch.full((R,), float("-inf"), device=dev)
        arg = torch.zeros(R, dtype=torch.long, device=dev) if argmax else None
        ids = None if token_ids is None else token_ids.to(dev)
        picked = None if ids is None else torch.zeros(ids.shape, device=dev)
        # Blocks of logits are temporaries: without autograd they are shifted and exponentiated in place.
        in_place = not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad))
        for c0 in range(0, weight.shape[0], chunk):
            z = torch.nn.functional.linear(hidden, weight[c0 : c0 + chunk],
                                           None if bias is None else bias[c0 : c0 + chunk])
            if cap:
                z = torch.tanh(z / cap) * cap
            z = z.float()
            if argmax:
                top, where = z.max(-1)
                new = top > best
                best = torch.where(new, top, best)
                arg = torch.where(new, where + c0, arg)
            else:
                top = z.amax(-1)
            if ids is not None:  # no `if inside.any()`: on a GPU that is a host sync per block
                inside = (ids >= c0) & (ids < c0 + z.shape[1])
                got = z.gather(1, (ids - c0).clamp(0, z.shape[1] - 1))
                picked = torch.where(inside, got, picked)
            m = torch.maximum(run_max, top)
            shifted = z.sub_(m.unsqueeze(1)) if in_place else z - m.unsqueeze(1)
            run_sum = run_sum * (run_max - m).exp() + shifted.exp_().sum(-1)
            run_max = m
        return VocabStats(run_max + run_sum.log(), picked, arg)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T, d_model]`` input embeddings as the embedding module returns them (Gemma's
        included ``sqrt(d_model)`` scale), without gradient: the space soft prompts live in."""
        with torch.no_grad():
            return self.model.get_input_embeddings()(input_ids.to(self.device))

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       logits_to_keep: int | torch.Tensor = 1) -> "LMOutput":
        """:meth:`forward` on embeddings (:meth:`embed` rows, or learned ones) instead of ids;
        gradients reach ``inputs_embeds``, never the frozen weights."""
        dev = self.device
        attention_mask = attention_mask.to(dev)
        out = self.model.base_model(
            inputs_embeds=inputs_embeds.to(dev, self.dtype),
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask, inputs_embeds.shape[1]),
            use_cache=False,
        )
        return LMOutput(self._kept_logits(out.last_hidden_state, logits_to_keep), None)

    def prefix_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Keys/values of every column but the last (no gradient); reuse with :meth:`last_token`.

        Patching or injecting at the last token leaves every earlier position unchanged under
        causal attention, so this prefix is shared by every variant of the last token. Runs
        the body only: a vocabulary-wide row per prompt would be wasted.
        """
        with torch.no_grad(), self.without_final_mlp():
            out = self.body(input_ids[:, :-1], attention_mask[:, :-1], use_cache=True)
        return out.cache

    def without_final_mlp(self):
        """Context in which the last block's MLP does not run, for passes that read only keys,
        values or head inputs (:meth:`prefix_cache`, mean activations): it feeds nothing but the
        final hidden state, which such passes discard. ``last_hidden_state`` is then not the
        model's."""
        return hooks.skip_mlp(self.adapter, self.n_layers - 1)

    def last_token(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache,
        repeat: int = 1,
        start_layer: int = 0,
        residual: torch.Tensor | None = None,
        hidden_only: bool = False,
        join: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B * repeat, vocab]`` of the last column, run against a prefix cache.

        Rows come out prompt-major (``b * repeat + r``). A forward appends to the cache it is
        given, so it gets a shallow copy: appending and repeating build new tensors, and the
        prefix tensors themselves are never written. With ``start_layer`` > 0 only blocks
        ``start_layer..`` run, on ``residual`` (``[B * repeat, d_model]``, from
        :meth:`last_token_inputs`): exact when the edit being measured sits at that layer.
        ``hidden_only`` returns the final-normed hidden states ``[B * repeat, d_model]``
        instead, for :meth:`logits_of` to unembed many of them at once. ``join`` is
        ``(starts, residual)``: the ``repeat`` rows of each prompt start at blocks ``starts``
        (ascending) from :meth:`last_token_inputs`' residual ``[L, B, d]``, in one forward
        (:func:`hooks.join_at`: block ``j`` runs the first ``k_j`` rows of every prompt).
        """
        out = self.continue_from(cache, input_ids[:, -1:], attention_mask, repeat=repeat,
                                 logits_to_keep=1, start_layer=start_layer, residual=residual,
                                 hidden_only=hidden_only, keep_cache=False, join=join)
        return out.last_hidden_state[:, -1] if hidden_only else out.logits[:, -1]

    def last_token_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-column final-normed hidden states ``[B, d]`` (for :meth:`vocab_stats`) and the
        residual entering every block ``[L, B, d]``."""
        with torch.no_grad(), hooks.record_block_inputs(self.adapter) as rec:
            hidden = self.last_token(input_ids, attention_mask, cache, hidden_only=True)
        self._blocks_return_tuple = rec["tuple"]
        return hidden, rec["inputs"]

    def continue_from(
        self,
        cache,
        new_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        repeat: int = 1,
        logits_to_keep: int | torch.Tensor = 1,
        start_layer: int = 0,
        residual: torch.Tensor | None = None,
        hidden_only: bool = False,
        keep_cache: bool = True,
        join: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """Run ``new_ids`` (``[B, n]``) after a prefix cache; ``attention_mask`` covers both.

        Gradients flow into anything injected here (e.g. a trainable vector at column 0) while
        the cached prefix stays constant. The cache itself is never modified. ``start_layer``
        and ``residual`` skip the blocks below that layer (see :meth:`last_token`);
        ``hidden_only`` runs :meth:`body` (no logits). ``repeat`` runs every prompt's new
        tokens that many times (rows ``b * repeat + j``). Without ``keep_cache`` the output has
        no cache to continue from (``.cache`` is None), and sdpa models then attend to each
        prefix once for all its repeats instead of copying it (:mod:`.shared_prefix`).
        """
        c = _fresh_view(cache)
        if join is not None:
            if keep_cache or start_layer or len(join[0]) != repeat:
                raise ValueError("join needs keep_cache=False, start_layer=0 and one start per repeat")
            # Block j runs k_j rows per prompt; blocks with none never read their cache entries.
            repeats = hooks.joined_rows(join[0], self.n_layers)
        else:
            repeats = [0] * start_layer + [repeat] * (self.n_layers - start_layer)
        running = [layer for layer, k in zip(c.layers, repeats) if k]
        shared = repeat > 1 and not keep_cache and shared_prefix.supported(self.model, running)
        if repeat > 1:
            if not shared:
                for layer, k in zip(c.layers, repeats):
                    if k:
                        _repeat_rows(layer, k)
            new_ids = new_ids.repeat_interleave(repeat, 0)
            attention_mask = attention_mask.repeat_interleave(repeat, 0)
        def run():
            with shared_prefix.shared_prefix(self.model, c) if shared else _null():
                if hidden_only:
                    out = self.body(new_ids, attention_mask, cache=c)
                else:
                    out = self.forward(new_ids, attention_mask, cache=c, logits_to_keep=logits_to_keep)
            if not keep_cache:
                out.cache = None
            return out

        if join is not None:
            with hooks.join_at(self.adapter, join[0], join[1].to(self.dtype), self._blocks_return_tuple):
                return run()
        if start_layer == 0:
            return run()
        if residual is None or residual.shape[0] != new_ids.shape[0]:
            raise ValueError(f"start_layer={start_layer} needs a residual with {new_ids.shape[0]} rows")
        with hooks.start_at(self.adapter, start_layer, residual.to(self.dtype).unsqueeze(1),
                            self._blocks_return_tuple):
            return run()

    def target_logprob(self, batch: PromptBatch, vectors: torch.Tensor | None, layer: int | None,
                       tokens: str = "all", cache=None) -> torch.Tensor:
        """``[B]`` log P(target | prompt, vector_b injected), differentiable in ``vectors``.

        The prefix runs without gradient (or comes precomputed as ``cache``, from
        :meth:`prefix_cache`, and is reused: a forward never modifies it); gradients reach the
        vectors through the last prompt token and the target tokens only (the LM gets none).
        """
        if tokens not in ("all", "first"):
            raise ValueError(f"tokens must be 'all' or 'first', got {tokens!r}")
        P = batch.prompt_len
        # Columns past the first target token are run only when they are scored.
        M = 1 if tokens == "first" else batch.target_ids.shape[1]
        ids, mask = batch.input_ids, batch.attention_mask
        if cache is None:
            cache = self.prefix_cache(ids[:, :P], mask[:, :P])
        edit = self.inject(vectors, layer, positions=0) if vectors is not None else _null()
        with edit:
            hidden = self.continue_from(cache, ids[:, P - 1 : P - 1 + M], mask[:, : P - 1 + M],
                                        hidden_only=True).last_hidden_state
        B, d = hidden.shape[0], hidden.shape[-1]
        tgt = batch.target_ids[:, :M].to(hidden.device)
        # Only target columns are unembedded (a padding column is a vocabulary-wide row of
        # logits, and of their gradient, for nothing); the others stay 0. The mask is the
        # batch's host tensor: finding the columns costs no device sync in a training step.
        keep = torch.ones(B * M, dtype=torch.bool) if tokens == "first" \
            else batch.target_mask[:, :M].reshape(B * M).bool()
        rows = keep.nonzero().squeeze(1).to(hidden.device)
        logits = self.logits_of(hidden.reshape(B * M, d)[rows]).float()
        picked = logits.gather(1, tgt.reshape(B * M, 1)[rows]).squeeze(1) - logits.logsumexp(-1)
        full = torch.zeros(B * M, device=hidden.device, dtype=picked.dtype).index_put((rows,), picked)
        return full.view(B, M).sum(-1)

    def batch(
        self,
        prompts: Sequence[str],
        answers: Sequence[str | Sequence[str]],
        template: PromptTemplate | None = None,
    ) -> PromptBatch:
        return make_batch(self.tokenizer, prompts, answers, template)

    def score(
        self,
        batch: PromptBatch,
        vector: torch.Tensor | None = None,
        layer: int | None = None,
    ) -> Scores:
        """First-token probability, full target log-probability and top-1 correctness.

        Logits are computed only at the columns that predict target tokens. With ``vector`` the
        vector (``[d]`` or ``[B, d]``) is added at the last prompt token of block ``layer``.
        """
        P, M = batch.prompt_len, batch.target_ids.shape[1]
        keep = torch.arange(P - 1, P - 1 + M)
        with torch.no_grad(), self._maybe_inject(vector, layer, P - 1):
            out = self.forward(batch.input_ids, batch.attention_mask, logits_to_keep=keep)
        return self._scores(out.logits, batch)

    def _scores(self, logits: torch.Tensor, batch: PromptBatch) -> Scores:
        logp = logits.float().log_softmax(-1)
        tgt = batch.target_ids.to(logp.device)
        mask = batch.target_mask.to(logp.device).float()
        tok_lp = logp[:, : tgt.shape[1]].gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * mask
        argmax = logits[:, 0].argmax(-1)
        firsts = batch.first_token_matrix().to(argmax.device)
        correct = (argmax.unsqueeze(1) == firsts).any(-1)
        return Scores(tok_lp[:, 0].exp(), tok_lp[:, 0], tok_lp.sum(-1), correct, argmax)

    @contextmanager
    def _maybe_inject(self, vector, layer, position) -> Iterator[None]:
        if vector is None:
            yield
            return
        if layer is None:
            raise ValueError("a vector needs a layer to be injected at")
        with self.inject(vector, layer, positions=position):
            yield

    def residual_norm(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """``[B]`` norms of block ``layer``'s output at the last column (where vectors are added)."""
        layer = self.check_layer(layer)
        seen: list[torch.Tensor] = []

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            seen.append(hidden[:, -1].detach().float().norm(dim=-1))

        handle = self.adapter.block(layer).register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.forward(input_ids, attention_mask)
        finally:
            handle.remove()
        return seen[0].cpu()

    def block_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """``[B, d_model]`` block ``layer``'s output at the last column (the residual stream where
        vectors are added), float32 on the CPU. The whole body runs: cutting the forward short with
        an exception left transformers' output-capturing hooks on the model."""
        layer = self.check_layer(layer)
        with torch.no_grad(), hooks.record_block_output(self.adapter, layer) as rec:
            self.body(input_ids, attention_mask)
        if rec["output"] is None:
            raise RuntimeError(f"block {layer} of {self.model_type} did not run; its output was not recorded")
        return rec["output"].float().cpu()

    # -- hooks -----------------------------------------------------------------------------
    def inject(self, vectors: torch.Tensor, layer: int, positions=None, rows=None,
               first_call_only: bool = False):
        """Context manager adding ``vectors`` to block ``layer``'s output (see hooks.inject)."""
        self.check_vector(vectors)
        return hooks.inject(self.adapter, vectors, layer, positions, rows, first_call_only)

    def record_heads(self, layers=None, positions=None):
        """Context manager yielding ``{layer: [B, heads, head_dim]}`` o_proj inputs."""
        return hooks.record_heads(self.adapter, layers, positions)

    def patch_heads(self, layers, heads, values, rows=None, positions=None):
        """Context manager replacing head slices of the o_proj input (see hooks.patch_heads)."""
        return hooks.patch_heads(self.adapter, layers, heads, values, rows, positions)

    def replace(self, vectors: torch.Tensor, layer: int, positions=None):
        """Context manager overwriting block ``layer``'s output with ``vectors`` (see hooks.replace)."""
        self.check_vector(vectors)
        return hooks.replace(self.adapter, vectors, self.check_layer(layer), positions)

    def inject_many(self, edits):
        """Several injections in one forward: ``edits`` are ``(layer, vector, rows)`` triples."""
        for _, v, _ in edits:
            self.check_vector(v)
        return hooks.inject_many(self.adapter, edits)

    @staticmethod
    def cache_rows(cache, rows: torch.Tensor):
        """A cache holding only ``rows`` of ``cache`` (new tensors; ``cache`` is left as it was)."""
        c = _fresh_view(cache)
        for layer in c.layers:
            keys = getattr(layer, "keys", None)
            layer.batch_select_indices(rows.to(keys.device) if keys is not None else rows)
        return c

    @staticmethod
    def repeat_cache(cache, n: int):
        """Repeat every row of a prefix cache ``n`` times in place (row ``b`` -> rows ``b*n..``)."""
        cache.batch_repeat_interleave(n)
        return cache

    def residual_contributions(self, layer: int, values: torch.Tensor) -> torch.Tensor:
        """Each head's contribution to the residual stream (``W_O`` slice times ``values``)."""
        return self.adapter.residual_contributions(layer, values)

    def residual_bias(self, layer: int, values: torch.Tensor) -> torch.Tensor:
        """The attention output projection's bias as written into the residual stream (zeros
        without one), linearised around ``values`` like :meth:`residual_contributions`."""
        return self.adapter.residual_bias(layer, values)

    @property
    def model_type(self) -> str:
        return self.adapter.model_type

    @property
    def n_params(self) -> int:
        """Parameters of the frozen model (none of them trains)."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def device_mapped(self) -> bool:
        """Whether the model is spread over several devices (``device_map``); it is not moved then."""
        return bool(getattr(self.model, "hf_device_map", None))

    def check_vector(self, v: torch.Tensor) -> None:
        """Refuse a vector made for another model (its last dimension is not ``d_model``)."""
        if v.shape[-1] != self.d_model:
            raise ValueError(
                f"vector has size {v.shape[-1]} but this model's d_model is {self.d_model} "
                f"({self.model_id}); was it made for another model?"
            )

    # -- generation and decoding -----------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 5,
        vector: torch.Tensor | None = None,
        layer: int | None = None,
    ) -> list[str]:
        """Greedy continuations; a vector edits only the prompt's last position."""
        tok = self.tokenizer
        enc = [encode_prompt(tok, p) for p in prompts]  # the same BOS policy as scored prompts
        T = max(map(len, enc))
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        ids = torch.full((len(enc), T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, T - len(e):] = torch.tensor(e)
            mask[i, T - len(e):] = 1
        ctx = (self.inject(vector, layer, positions=-1, first_call_only=True)
               if vector is not None else _null())
        with torch.no_grad(), ctx:
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
            )
        return tok.batch_decode(out[:, T:], skip_special_tokens=True)

    def lens_logits(self, vector: torch.Tensor) -> torch.Tensor:
        """``[vocab]`` logits of a vector read through the final norm and the unembedding (the
        logit lens), in float32 on the CPU.

        Any logit soft-cap is left out: it is monotone, so ranks are the same, and it would only
        create ties among saturated logits.
        """
        self.check_vector(vector)
        ad = self.adapter
        with torch.no_grad():
            h = vector.to(self.device, self.dtype).reshape(1, 1, -1)
            logits = ad.unembedding(ad.final_norm(h))[0, 0]
        return logits.float().cpu()

    def logit_lens(self, vector: torch.Tensor, k: int = 10) -> list[tuple[str, float]]:
        """Top-k tokens of a vector in the logit lens (:meth:`lens_logits`)."""
        top = self.lens_logits(vector).topk(k)
        return [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)]

    # -- start-up check --------------------------------------------------------------------
    def self_check(self, layer: int | None = None) -> float:
        """Prove that an injection changes the logits and that hooks leave no trace.

        Returns the largest logit change. Raises :class:`SelfCheckError` otherwise: an injection
        that silently does nothing would make every later number meaningless.
        """
        layer = self.default_layer() if layer is None else self.check_layer(layer)
        batch = self.batch(["Q: hot\nA:"], ["cold"])
        with torch.no_grad():
            base = self.forward(batch.prompt_ids, batch.prompt_mask)
            base_logits = base.logits[0, -1].float()
            g = torch.Generator().manual_seed(0)
            v = torch.randn(self.d_model, generator=g)
            hidden = self.model(
                input_ids=batch.prompt_ids.to(self.device),
                attention_mask=batch.prompt_mask.to(self.device),
                output_hidden_states=True,
            ).hidden_states[layer + 1][0, -1].float()
            v = v / v.norm() * max(float(hidden.norm()), 1.0) * 4
            with self.inject(v, layer):
                edited = self.forward(batch.prompt_ids, batch.prompt_mask).logits[0, -1].float()
            after = self.forward(batch.prompt_ids, batch.prompt_mask).logits[0, -1].float()
        delta = float((edited - base_logits).abs().max())
        if not delta > 1e-4:
            raise SelfCheckError(
                f"injection self-check failed: adding a vector to block {layer} of "
                f"{self.adapter.model_type} did not change the logits (max change {delta:.2e}); "
                "the block-output hook does not reach the residual stream with this transformers "
                "version"
            )
        if not torch.equal(after, base_logits):
            raise SelfCheckError("hooks left a trace: logits differ after the injection context exited")
        return delta


def _cache_kwargs(cache, use_cache: bool) -> dict:
    """Keyword arguments passing a prefix cache to a transformers model.

    transformers >= 5.24 names it ``cache`` (``past_key_values`` warns and goes away in 5.40;
    outputs carry it as ``.cache``). ``cache`` is left out when there is none: passing even
    ``past_key_values=None`` triggers the deprecation warning.
    """
    kw: dict = {"use_cache": use_cache or cache is not None}
    if cache is not None:
        kw["cache"] = cache
    return kw


def _fresh_view(cache):
    """A copy of a DynamicCache sharing its tensors (no data is copied)."""
    c = copy.copy(cache)
    c.layers = [copy.copy(layer) for layer in cache.layers]
    return c


def _repeat_rows(layer, r: int) -> None:
    """Make a fresh cache layer act as its rows repeated ``r`` times (prompt-major), as
    ``batch_repeat_interleave`` does, but without the repeated copy: the first ``update`` writes
    the repeated prefix and the new entries in one pass (a repeat then a concatenation wrote the
    repeated prefix twice). Layer kinds it does not know are repeated the plain way."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    kind = type(layer)
    if kind not in (DynamicLayer, DynamicSlidingWindowLayer) or getattr(layer, "record_past", False) \
            or getattr(layer, "keys", None) is None or layer.keys.dim() != 4:
        layer.batch_repeat_interleave(r)
        return

    def update(keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        full_k, full_v = _cat_repeated(layer.keys, keys, r), _cat_repeated(layer.values, values, r)
        del layer.update  # from here on the layer holds repeated rows and updates as it always did
        if kind is DynamicSlidingWindowLayer:
            layer.cumulative_length += keys.shape[-2]
            layer.keys = full_k[:, :, -layer.sliding_window + 1 :, :]
            layer.values = full_v[:, :, -layer.sliding_window + 1 :, :]
        else:
            layer.keys, layer.values = full_k, full_v
        return full_k, full_v

    layer.update = update


def _cat_repeated(old: torch.Tensor, new: torch.Tensor, r: int) -> torch.Tensor:
    """``cat([old.repeat_interleave(r, 0), new], -2)`` as one copy: ``old`` is broadcast over the
    repeats, never materialised on its own."""
    B, h, T, d = old.shape
    n = new.shape[-2]
    wide = old.unsqueeze(1).expand(B, r, h, T, d)
    return torch.cat([wide, new.reshape(B, r, h, n, d)], dim=-2).view(B * r, h, T + n, d)


@contextmanager
def _null() -> Iterator[None]:
    yield
