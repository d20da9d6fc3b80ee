"""An lm-eval model class that scores multiple-choice questions from one pass over each question.

lm-eval's HFLM scores a question with k choices as k independent sequences `context + choice`,
so the (long) context runs k times. FastHFLM runs each distinct context once, keeps its KV cache,
copies the cache once per choice and runs only the choice tokens on top of it:

    contexts  [B, Lc]      left-padded, one row per distinct context   -> cache, logits of the last token
    choices   [R, Lt]      right-padded choice tokens minus the last one, R = all choices of the B contexts,
                           attending to their context's cached keys     -> logits of the other choice tokens

The tokenization is HFLM's own (`loglikelihood` tokenizes, then calls `_loglikelihood_tokens`,
which this class replaces), so the scores equal HFLM's up to float rounding. Requests longer than
the model's window fall back to HFLM's left-truncating path. Greedy generation (`generate_until`)
runs through greedy.py: requests of every task share batches and each leaves its batch when done;
anything else (sampling) takes HFLM's path.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..chat.lmhead import contiguous_head_input
from . import greedy
from .harness import check_lm_eval_version
from .kvcache import cache_kwargs, returned_cache

# Before the imports below: on an lm-eval outside the tested range they fail with an ImportError
# (or bind private names that changed), and this says which version is needed instead.
check_lm_eval_version()

from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text  # noqa: E402
from tqdm import tqdm  # noqa: E402

Request = tuple[tuple[str, str], list[int], list[int]]  # ((context, continuation), context ids, continuation ids)


@register_model("adaptermerge-fast")
class FastHFLM(HFLM):
    """HFLM with shared-context scoring. `context_batch`: distinct contexts per forward pass;
    `token_budget`: at most this many (padded) context tokens per forward pass."""

    def __init__(self, *args, context_batch: int = 8, token_budget: int = 4096, progress_bars: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        contiguous_head_input(self.model)
        self.progress_bars = progress_bars  # False: no tqdm bars (the caller shows its own progress)
        self.context_batch = int(context_batch)
        self.token_budget = int(token_budget)
        # Whether logits = output_embeddings(body's last hidden state) holds for this model; checked
        # on the first batch against the full forward (a model with e.g. logit soft-capping fails it).
        self._split_head: bool | None = None
        params = inspect.signature(self.model.forward).parameters
        # logits_to_keep=1 skips the vocabulary projection of every context token but the last.
        self._keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress_bars)

    def generate_until(self, requests, disable_tqdm: bool = False):
        disable_tqdm = disable_tqdm or not self.progress_bars
        rows = self._greedy_rows(requests)
        if rows is None:  # sampling, thinking models, seq2seq, auto batch size, autocast: HFLM's own path
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos, default=0)
        bar = tqdm(total=len(rows), disable=disable_tqdm, desc="Running generate_until requests")
        outputs = greedy.generate(self.model, rows, batch_size=int(self.batch_size), pad_id=pad, eos=eos,
                                  decode=self.tok_decode, logits_to_keep=bool(self._keep_kw), on_batch=bar.update)
        bar.close()
        results = []
        for request, row, tokens in zip(requests, rows, outputs):
            text = postprocess_generated_text(self.tok_decode(tokens), row.stops, None)
            results.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return results

    def _greedy_rows(self, requests) -> list[greedy.Row] | None:
        """Each request as a greedy.Row, tokenized and truncated as HFLM.generate_until does; None
        when a request asks for something greedy.py does not do (sampling and the like)."""
        if (self.backend != "causal" or self.think_end_token is not None or not isinstance(self.batch_size, int)
                or getattr(self, "mixed_precision_dtype", None) is not None):  # HFLM generates under autocast then
            return None
        eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        rows = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            stops = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = kwargs.pop("max_gen_toks")
            kwargs.pop("temperature", None)
            if kwargs.pop("do_sample", False) or kwargs:
                return None
            ids, _ = self.tok_batch_encode([context], left_truncate_len=self.max_length - max_new, truncation=self.truncation)
            rows.append(greedy.Row(ids[0].tolist(), max_new, stops))
        return rows

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, override_bs=None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: OrderedDict[tuple[int, ...], list[int]] = OrderedDict()  # context ids -> request indices
        too_long: list[int] = []
        for i, (_, context, continuation) in enumerate(requests):
            if len(context) + len(continuation) > self.max_length + 1:
                too_long.append(i)
            else:
                groups.setdefault(tuple(context), []).append(i)
        if too_long:
            for i, answer in zip(too_long, super()._loglikelihood_tokens([requests[i] for i in too_long], True)):
                results[i] = answer
        for batch in self._batches(list(groups.items())):
            contexts = [list(ctx) for ctx, _ in batch]
            choices = [[requests[i][2] for i in idx] for _, idx in batch]
            scores = self._score_batch(contexts, choices)
            for (_, idx), group_scores in zip(batch, scores):
                for i, answer in zip(idx, group_scores):
                    results[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results

    def _batches(self, groups: list) -> list[list]:
        """Contexts sorted by length, cut by count, padded-token budget, and where a context is
        shorter than greedy.PAD_FILL of its batch's longest (a few long MMLU passages among short
        questions made 1.8x as many padded context tokens as real ones)."""
        groups = sorted(groups, key=lambda g: -len(g[0]))
        batches, current = [], []
        for group in groups:
            width = len(current[0][0]) if current else len(group[0])  # the first is the longest
            if current and (len(current) >= self.context_batch or (len(current) + 1) * width > self.token_budget
                            or len(group[0]) < greedy.PAD_FILL * width):
                batches.append(current)
                current = []
            current.append(group)
        if current:
            batches.append(current)
        return batches

    @torch.no_grad()
    def _score_batch(self, contexts: list[list[int]], choices: list[list[list[int]]]) -> list[list[tuple[float, bool]]]:
        """Log-probability and greedy flag of every choice; contexts[b] is shared by choices[b]."""
        device = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        n_ctx, width = len(contexts), max(len(c) for c in contexts)
        ids = torch.full((n_ctx, width), pad, dtype=torch.long)
        mask = torch.zeros((n_ctx, width), dtype=torch.long)
        for b, ctx in enumerate(contexts):  # left padding: every context ends at column width-1
            ids[b, width - len(ctx):] = torch.tensor(ctx)
            mask[b, width - len(ctx):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
            use_cache=True, **self._keep_kw,
        )
        first = F.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]: predicts each choice's first token
        first_best = first.argmax(-1)  # [B]

        rows = [(b, choice) for b, group in enumerate(choices) for choice in group]
        tail_lp: dict[int, list[float]] = {}  # row -> log-probs of its choice tokens after the first
        tail_ok: dict[int, bool] = {}
        for chunk in _length_buckets([len(choice) - 1 for _, choice in rows]):
            lp, ok = self._score_tails([rows[r] for r in chunk], returned_cache(out), mask, positions, pad)
            tail_lp.update(zip(chunk, lp))
            tail_ok.update(zip(chunk, ok))

        scores: list[list[tuple[float, bool]]] = [[] for _ in contexts]
        for r, (b, choice) in enumerate(rows):
            total = float(first[b, choice[0]]) + sum(tail_lp.get(r, []))
            greedy = int(first_best[b]) == choice[0] and tail_ok.get(r, True)
            scores[b].append((total, bool(greedy)))
        return scores

    def _score_tails(self, rows, context_cache, mask, positions, pad) -> tuple[list[list[float]], list[bool]]:
        """Log-probabilities of tokens 2.. of each (context index, choice) row, on a copy of the context cache."""
        device = self.device
        width = max(len(choice) for _, choice in rows) - 1
        owner = torch.tensor([b for b, _ in rows], device=device)
        cache = copy.deepcopy(context_cache)  # small (one row per context); the original serves the other buckets
        cache.batch_select_indices(owner)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for r, (_, choice) in enumerate(rows):
            ids[r, : len(choice) - 1] = torch.tensor(choice[:-1])
        # Right padding of the choices needs no mask: causal attention never looks ahead.
        tail_mask = torch.cat([mask.to(device)[owner], torch.ones((len(rows), width), dtype=torch.long, device=device)], 1)
        tail_pos = positions[:, -1:].to(device)[owner] + 1 + torch.arange(width, device=device)
        real = torch.tensor([[t < len(choice) - 1 for t in range(width)] for _, choice in rows], device=device)
        logp = self._tail_logprobs(ids.to(device), tail_mask, tail_pos, cache, real)  # [N, V], N = real positions
        targets = torch.tensor([tok for _, choice in rows for tok in choice[1:]], device=device)  # row-major, as `real`
        flat_lp = logp.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
        flat_ok = (logp.argmax(-1) == targets).tolist()
        lp, ok, at = [], [], 0
        for _, choice in rows:
            n = len(choice) - 1
            lp.append(flat_lp[at : at + n])
            ok.append(all(flat_ok[at : at + n]))
            at += n
        return lp, ok


    def _tail_logprobs(self, ids, mask, positions, cache, real) -> torch.Tensor:
        """Log-probabilities [N, V] at the N real (unpadded) choice positions, in row-major order.

        The vocabulary projection runs only there: over all rows x the longest choice it would cost
        more than the transformer itself for cloze-style choices of uneven length."""
        body, head = self.model.base_model, self.model.get_output_embeddings()
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        if self._split_head is False or body is self.model or head is None:
            return F.log_softmax(self.model(**cache_kwargs(cache), **kwargs).logits[real].float(), dim=-1)
        full = None
        if self._split_head is None:
            full = F.log_softmax(self.model(**cache_kwargs(copy.deepcopy(cache)), **kwargs).logits[real].float(), dim=-1)
        hidden = body(**cache_kwargs(cache), **kwargs).last_hidden_state  # [R, Lt, H]
        logp = F.log_softmax(head(hidden[real]).float(), dim=-1)
        if full is not None:
            # A structural difference (soft-capping, a logit scale) moves log-probs by far more than rounding.
            tolerance = 1e-3 if hidden.dtype == torch.float32 else 0.1
            self._split_head = bool(torch.allclose(logp, full, atol=tolerance))
            return full
        return logp


def _length_buckets(lengths: list[int]) -> list[list[int]]:
    """Indices of rows with length > 0, longest first, cut into buckets as greedy.buckets cuts prompts."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    return [[order[j] for j in bucket] for bucket in greedy.buckets([lengths[i] for i in order])]
