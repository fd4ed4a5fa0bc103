"""Runs one scheduled step through the model: lays out the flattened batch, owns the KV cache, samples.

Shapes: T = tokens of the step, B = decode rows (a decoding sequence's token, and its drafts), L = their longest
context, R = rows that give logits this step (one per sampling sequence, 1 + drafts for one checking speculative
drafts), D = hidden size, V = vocabulary.
"""

import torch
from torch import nn

from runtime.engine.config import EngineConfig
from runtime.engine.kv_cache import KVCache
from runtime.engine.sequence import Sequence
from runtime.engine.speculative import verify
from runtime.layers.attention import AttentionContext, PrefillSpan, attention_context
from runtime.layers.batch_invariant import make_batch_invariant
from runtime.sampling import Sampler, TokenLogprobs, rows_logprobs
from runtime.structured import allowed_tokens, draft_rows_allowed

PROMPT_LOGITS_ROWS = 128  # prompt rows turned into logits at once: [128, V] fp32 is 78 MB at V = 151936


class ModelRunner:
    def __init__(self, model: nn.Module, config: EngineConfig):
        if config.batch_invariant:
            make_batch_invariant(model, config.invariant_tile)
        self.batch_invariant = config.batch_invariant
        self.model = model
        self.block_size = config.block_size
        self.kv_cache = KVCache(model, config)
        self.num_blocks = self.kv_cache.num_blocks
        self.device = next(model.parameters()).device
        self.sampler = Sampler()

    def _slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def _context_slots(self, tables: list[list[int]], length: int) -> torch.Tensor:
        """Cache slots of positions [0, length) of each block table, vectorised (contexts can be long).

        tables: B block tables -> [B, length] int64; positions past a table's end get slot 0 (masked by the caller).
        """
        width = -(-length // self.block_size)
        padded = torch.tensor([t[:width] + [0] * (width - len(t[:width])) for t in tables], device=self.device)
        offsets = torch.arange(self.block_size, device=self.device)
        return (padded[:, :, None] * self.block_size + offsets).reshape(len(tables), -1)[:, :length]  # [B, length]

    def _prepare(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, AttentionContext]:
        """seqs: decodes (one scheduled token, or one and its speculative drafts) first, then prefills."""
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        decode_tables: list[list[int]] = []  # one per decode row
        decode_lengths: list[int] = []
        prefills: list[PrefillSpan] = []
        for seq in seqs:
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + seq.num_scheduled_tokens
            row = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            new_slots = self._slots(seq, start, end)
            slot_mapping.extend(new_slots)
            if (seq.num_scheduled_tokens == 1 or seq.num_draft_tokens) and not prefills:
                # a decode, or a token and its drafts: each row attends as a decode at its position would
                decode_tables.extend([seq.block_table] * (end - start))
                decode_lengths.extend(range(start + 1, end + 1))
            else:
                prefills.append(PrefillSpan(row, row + end - start, self._context_slots([seq.block_table], end)[0]))
        decode_slots = lengths = None
        if decode_tables:
            lengths = torch.tensor(decode_lengths, device=self.device)  # [B]
            decode_slots = self._context_slots(decode_tables, max(decode_lengths))
        context = AttentionContext(
            slot_mapping=torch.tensor(slot_mapping, device=self.device),
            num_decode=len(decode_tables),
            decode_slots=decode_slots,  # [B, L]
            prefills=tuple(prefills),
            decode_lengths=lengths,  # [B]
            batch_invariant=self.batch_invariant,
        )
        ids = torch.tensor(input_ids, device=self.device)  # [T]
        return ids, torch.tensor(positions, device=self.device), context

    @torch.inference_mode()
    def run(
        self, seqs: list[Sequence], sample: list[bool]
    ) -> tuple[list[list[int]], list[list[TokenLogprobs | None]]]:
        """Compute the scheduled tokens of seqs; the next tokens of those flagged in `sample`, [] for the others.

        A sequence carrying speculative drafts gets the logits of its last 1 + drafts rows and takes the drafts the
        model agrees with plus one token of its own (speculative.verify); every other one samples one token. A
        sequence asking for its prompt's log-probabilities gets those of the prompt tokens this step computed.
        """
        input_ids, positions, context = self._prepare(seqs)
        self.kv_cache.bind()
        with attention_context(context):
            hidden = self.model(input_ids, positions)  # [T, D]
        rows, spans, row = [], [], 0
        for seq, wants in zip(seqs, sample, strict=True):
            if seq.params.prompt_logprobs is not None:
                self._prompt_logprobs(seq, hidden[row : row + seq.num_scheduled_tokens])
            row += seq.num_scheduled_tokens
            wanted = 1 + seq.num_draft_tokens if wants else 0
            spans.append((len(rows), wanted))
            rows.extend(range(row - wanted, row))
        tokens: list[list[int]] = [[] for _ in seqs]
        logprobs: list[list[TokenLogprobs | None]] = [[] for _ in seqs]
        if not rows:
            return tokens, logprobs
        logits = self.model.compute_logits(hidden.index_select(0, torch.tensor(rows, device=self.device)))  # [R, V]
        plain = [i for i, (_, wanted) in enumerate(spans) if wanted == 1]
        if plain:  # one batched draw for the sequences without drafts
            histories = [seqs[i].history if seqs[i].params.adjusts_logits else None for i in plain]
            allowed = allowed_tokens([seqs[i].matcher for i in plain], logits.shape[-1])  # [P, V] or None
            chosen, chosen_logprobs = self.sampler(logits[[spans[i][0] for i in plain]],
                                                   [seqs[i].params for i in plain], [seqs[i].generator for i in plain],
                                                   histories, allowed)
            for i, token, logprob in zip(plain, chosen, chosen_logprobs, strict=True):
                tokens[i], logprobs[i] = [token], [logprob]
        for i, (first, wanted) in enumerate(spans):
            if wanted > 1:
                seq = seqs[i]
                allowed = None if seq.matcher is None else draft_rows_allowed(seq.matcher, seq.draft_token_ids,
                                                                              logits.shape[-1])  # [wanted, V]
                history = seq.history if seq.params.adjusts_logits else None  # each row adds the drafts before it
                tokens[i], logprobs[i] = verify(logits[first : first + wanted], seq.draft_token_ids, seq.params,
                                                seq.generator, allowed, history)
        return tokens, logprobs

    def _prompt_logprobs(self, seq: Sequence, hidden: torch.Tensor) -> None:
        """Fill seq.prompt_logprobs for the prompt tokens this step's rows predict: the row at position p gives the
        distribution of token p + 1. hidden [num_scheduled_tokens, D], from position num_computed_tokens."""
        start = seq.num_computed_tokens
        end = min(start + seq.num_scheduled_tokens, seq.num_prompt_tokens - 1)  # the last prompt row samples
        for a in range(start, end, PROMPT_LOGITS_ROWS):
            b = min(a + PROMPT_LOGITS_ROWS, end)
            logits = self.model.compute_logits(hidden[a - start : b - start])  # [b - a, V]
            seq.prompt_logprobs[a + 1 : b + 1] = rows_logprobs(logits, seq.token_ids[a + 1 : b + 1],
                                                               seq.params.prompt_logprobs)
