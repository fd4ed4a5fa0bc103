"""Per-request sampling parameters and the batched sampler.

Shapes: B = sequences in the step, V = vocabulary.
Each request may carry its own seed: its random draws come from its own `torch.Generator`, so the same seed and
the same logits give the same token whatever else is in the batch.
"""

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from runtime.penalties import adjusted_logits

# below this a temperature is greedy (vLLM's _SAMPLING_EPS): dividing by a far smaller one overflows fp32 logits to
# inf, and their softmax is NaN
GREEDY_BELOW_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20
MAX_32_BITS, MAX_64_BITS = 2**32 - 1, 2**64 - 1  # seeds: see generator_seed
# vLLM takes any repetition penalty > 0, but past these an fp32 logit divided or multiplied by it overflows to inf
# (and a 0 logit times inf is NaN): the row's softmax is NaN
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0


class SamplingError(ValueError):
    """Sampling parameters out of range; the message names the field, and `field` holds its name (a server's 400
    names the request field it came from)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # pickled with its field: Ray carries an error from a replica to the router this way
        return type(self), (self.args[0], self.field)


STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "structural_tag")


@dataclass(frozen=True)
class StructuredOutput:
    """What the completion must be (runtime/structured.py): `json` (spec: a JSON schema, or "" for any JSON value),
    `regex`, `choice` (spec: a JSON list of the allowed strings), `grammar` (EBNF) or `structural_tag` (xgrammar's
    JSON format: how the server holds forced tool calls to their schemas)."""

    kind: str
    spec: str = ""
    specials: tuple[str, ...] = ()  # special tokens (by their text) the grammar writes: Kimi's tool-call markers

    def __post_init__(self):
        if self.kind not in STRUCTURED_KINDS:
            raise SamplingError(f"structured output kind must be one of {', '.join(STRUCTURED_KINDS)}, "
                                f"got {self.kind!r}", "structured")
        if self.kind != "json" and not self.spec:
            raise SamplingError(f"structured output of kind {self.kind!r} needs a spec", "structured")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 (or below GREEDY_BELOW_TEMPERATURE) = greedy
    top_p: float = 1.0  # nucleus mass kept, (0, 1]
    top_k: int = 0  # 0 (or vLLM's -1) = no top-k cut
    seed: int | None = None  # per-request generator: reproducible draws
    max_tokens: int = 256
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any of these strings
    stop_token_ids: tuple[int, ...] = ()  # ... or at any of these tokens (besides the model's EOS)
    ignore_eos: bool = False
    logprobs: int | None = None  # return the chosen token's logprob and this many top alternatives
    prompt_logprobs: int | None = None  # ... and of every prompt token after the first (no prefix-cache reuse)
    min_p: float = 0.0  # after temperature, tokens less likely than min_p x the likeliest one are cut
    # runtime/penalties.py: applied to the logits before temperature
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    structured: StructuredOutput | None = None  # a grammar the completion must follow (runtime/structured.py)
    priority: int = 0  # scheduling: lower is served first (vLLM's convention); equal priorities in arrival order

    def __post_init__(self):
        if not 0 <= self.temperature < math.inf:  # inf made every logit 0 or NaN
            raise SamplingError(f"temperature must be finite and >= 0, got {self.temperature}", "temperature")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k < -1:
            raise SamplingError(f"top_k must be 0 or -1 (no cut) or at least 1, got {self.top_k}", "top_k")
        if self.max_tokens <= 0:
            raise SamplingError(f"max_tokens must be > 0, got {self.max_tokens}", "max_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            count = getattr(self, name)
            if count is not None and not 0 <= count <= MAX_LOGPROBS:
                raise SamplingError(f"{name} must be in [0, {MAX_LOGPROBS}], got {count}", name)
        if not 0 <= self.min_p <= 1:
            raise SamplingError(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise SamplingError(f"{name} must be in [-2, 2], got {getattr(self, name)}", name)
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise SamplingError(f"repetition_penalty must be in [{MIN_REPETITION_PENALTY}, "
                                f"{MAX_REPETITION_PENALTY:g}], got {self.repetition_penalty}", "repetition_penalty")
        if any(not -100 <= bias <= 100 for _, bias in self.logit_bias):
            raise SamplingError("logit_bias values must be in [-100, 100]", "logit_bias")
        if self.structured is not None and self.ignore_eos:
            raise SamplingError("ignore_eos cannot go with structured output (a complete output ends at EOS)",
                                "ignore_eos")
        if any(not s for s in self.stop):
            raise SamplingError("stop strings must be non-empty", "stop")
        object.__setattr__(self, "top_k", max(self.top_k, 0))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in self.logit_bias))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    @cached_property
    def logit_bias_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """logit_bias as (token ids [K] long, biases [K] fp32) on the CPU, built once: applied at every token."""
        ids, biases = zip(*self.logit_bias, strict=True) if self.logit_bias else ((), ())
        return torch.tensor(ids, dtype=torch.long), torch.tensor(biases, dtype=torch.float32)

    @property
    def adjusts_logits(self) -> bool:
        """Its logits depend on the tokens so far (penalties) or are biased: runtime/penalties.py."""
        return bool(self.logit_bias or self.presence_penalty or self.frequency_penalty
                    or self.repetition_penalty != 1.0)


@dataclass(frozen=True)
class TokenLogprobs:
    logprob: float  # of the chosen token
    top: tuple[tuple[int, float], ...]  # (token id, logprob), best first
    rank: int | None = None  # of the chosen token in the whole vocabulary, 1 = the likeliest (vLLM's `rank`)


def _filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then min-p, top-k and top-p on one row. logits [V] fp32 -> [V] (-inf where cut)."""
    logits = logits / params.temperature
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), float("-inf"))
    return logits


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a sampled token is drawn from: one row's logits [V] fp32, cut by the params -> [V]."""
    return torch.softmax(_filtered_logits(logits, params), dim=-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from probs [V] by inverse CDF, from one uniform draw. torch.multinomial draws V exponentials for
    one sample: 5.7 ms a row at V = 151936 on this 2-core machine, a tenth of a batch-8 decode step."""
    cdf = probs.cumsum(0, dtype=torch.float64)  # [V]; a zero-probability token never rises above its predecessor
    u = torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1]  # in [0, total)
    return int(torch.searchsorted(cdf, u, right=True).clamp(max=probs.numel() - 1))


class Sampler:
    """Chooses the next token of every sequence of a step from its logits row."""

    def __call__(
        self, logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
        histories: list[tuple[list[int], list[int]] | None] | None = None, allowed: torch.Tensor | None = None,
    ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """`histories`: each row's (prompt, completion so far) token ids, where its params adjust logits;
        `allowed`: bool [B, V], the tokens each row's grammar lets it take (runtime/structured.py)."""
        # logits [B, V] fp32
        logits = logits.float()
        chosen_from = logits
        if any(p.adjusts_logits for p in params):
            chosen_from = logits.clone()
            for row, p in enumerate(params):
                if p.adjusts_logits:
                    chosen_from[row] = adjusted_logits(logits[row], p, *histories[row])
        if allowed is not None:
            chosen_from = chosen_from.masked_fill(~allowed, float("-inf"))
        tokens = chosen_from.argmax(dim=-1).tolist()  # greedy for every row; sampled rows are overwritten below
        for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
            if p.greedy:
                continue
            tokens[row] = draw(sampling_probs(chosen_from[row], p), gen)
        # the model's own distribution, before any bias or penalty
        logprobs = [token_logprobs(logits[i], tok, p) for i, (tok, p) in enumerate(zip(tokens, params, strict=True))]
        return tokens, logprobs


def token_logprobs(logits: torch.Tensor, token: int, params: SamplingParams) -> TokenLogprobs | None:
    """The chosen token's logprob and the top alternatives under the raw model distribution of one row [V]; None
    unless the request asked for logprobs."""
    if params.logprobs is None:
        return None
    return rows_logprobs(logits[None], [token], params.logprobs)[0]


def rows_logprobs(logits: torch.Tensor, tokens: list[int], alternatives: int) -> list[TokenLogprobs]:
    """Each row's token's logprob and its top `alternatives` under the raw model distribution. logits [R, V]."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])  # [R, 1]
    ranks = ((logp > chosen).sum(dim=-1) + 1).tolist()  # [R]; ties share the better rank
    chosen = chosen[:, 0].tolist()  # [R]
    if not alternatives:
        return [TokenLogprobs(logprob=c, top=(), rank=r) for c, r in zip(chosen, ranks, strict=True)]
    top = torch.topk(logp, alternatives, dim=-1)  # [R, k]
    return [TokenLogprobs(logprob=c, top=tuple(zip(ids, values, strict=True)), rank=r)
            for c, r, ids, values in zip(chosen, ranks, top.indices.tolist(), top.values.tolist(), strict=True)]


def make_generator(seed: int | None) -> torch.Generator | None:
    """A private generator for a seeded request; None = the global RNG."""
    if seed is None:
        return None
    gen = torch.Generator()
    gen.manual_seed(generator_seed(seed))
    return gen


def generator_seed(seed: int) -> int:
    """The 32-bit seed of a request's generator. torch's CPU generator (mt19937) keeps only the low 32 bits of the
    seed it is given, so seeds that differed by a multiple of 2^32 drew the same samples (-1 those of 2^32 - 1). A
    seed in [0, 2^32) is kept as it is, so its samples are unchanged; any other (a negative one as its 64-bit two's
    complement, as torch reads it) is mixed by splitmix64's finalizer, so that each of its 64 bits counts."""
    if 0 <= seed <= MAX_32_BITS:
        return seed
    z = seed & MAX_64_BITS
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MAX_64_BITS
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MAX_64_BITS
    z ^= z >> 31
    return (z ^ (z >> 32)) & MAX_32_BITS
