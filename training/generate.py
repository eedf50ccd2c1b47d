"""Text generation with a key/value cache: greedy, sampling (temperature, top-k, top-p) streamed
token by token, and beam search (length penalty, early stopping, no-repeat n-grams) with the
semantics of Hugging Face `generate`.

    loom generate --checkpoint loom-work/runs/r1/train --prompt "ROMEO:" --top-p 0.9
    loom generate --checkpoint loom-work/runs/r1/finetune --chat --prompt "What is 7 + 5?" --num-beams 4
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0  # beam scores are sum log p / generated_length ** length_penalty
    early_stopping: bool = False  # beam search stops once num_beams hypotheses are finished
    no_repeat_ngram_size: int = 0
    seed: int | None = None


class _Feeder:
    """Feeds new tokens through the model with a cache; when the context is full, it starts over
    from the last half of the sequence (absolute positions cannot slide)."""

    def __init__(self, model):
        self.model = model
        self.block = model.config.block_size
        self.cache = model.new_cache()

    def length(self) -> int:
        return self.cache[0]["k"].shape[2] if "k" in self.cache[0] else 0

    @torch.no_grad()
    def __call__(self, new: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next token after `sequences` (whose last tokens are `new`)."""
        if self.length() + new.shape[1] > self.block:
            self.cache = self.model.new_cache()
            new = sequences[:, -max(1, self.block // 2):]
        logits, _ = self.model(new, cache=self.cache)
        return F.log_softmax(logits[:, -1, :].float(), dim=-1)

    def reorder(self, beams: torch.Tensor) -> None:
        for layer in self.cache:
            if "k" in layer:
                layer["k"], layer["v"] = layer["k"][beams], layer["v"][beams]


def banned_tokens(sequence: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in `sequence` (Hugging Face's no_repeat_ngram_size)."""
    if n <= 0 or len(sequence) < n:
        return set()
    prefix = tuple(sequence[len(sequence) - n + 1:]) if n > 1 else ()
    return {sequence[i + n - 1] for i in range(len(sequence) - n + 1) if tuple(sequence[i:i + n - 1]) == prefix}


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -float("inf"))
    return logits


@torch.no_grad()
def stream(model, prompt: list[int], cfg: GenerationConfig, stop: set[int] = frozenset()) -> Iterator[int]:
    """Greedy decoding or sampling, one token at a time (stops after a token in `stop`)."""
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    feed = _Feeder(model)
    device = next(model.parameters()).device
    sequence = torch.tensor([prompt], dtype=torch.long, device=device)
    new = sequence
    for _ in range(cfg.max_new_tokens):
        logp = feed(new, sequence)[0]
        for token in banned_tokens(sequence[0].tolist(), cfg.no_repeat_ngram_size):
            logp[token] = -float("inf")
        if cfg.temperature <= 0:
            token = int(torch.argmax(logp))
        else:
            logits = _filter_logits(logp / cfg.temperature, cfg.top_k, cfg.top_p)
            token = int(torch.multinomial(torch.softmax(logits, dim=-1).cpu(), 1, generator=generator))
        yield token
        if token in stop:
            return
        new = torch.tensor([[token]], device=device)
        sequence = torch.cat([sequence, new], dim=1)


@torch.no_grad()
def beam_search(model, prompt: list[int], cfg: GenerationConfig, stop: set[int] = frozenset()
                ) -> tuple[list[int], float]:
    """The best continuation of `prompt` and its score, by beam search.

    As Hugging Face: at each step the 2 * num_beams best extensions of the live beams are
    considered; one ending in a stop token (among the num_beams best) becomes a finished
    hypothesis scored sum log p / generated_length ** length_penalty; the search ends after
    max_new_tokens, or when num_beams hypotheses are finished and (early_stopping) at once, or
    (otherwise) when no live beam can still beat the worst finished one. Beams still live compete with
    the finished ones only when the search ran to max_new_tokens (as Hugging Face's finalize: a search
    that stopped early is done, and its live beams are dropped)."""
    n, plen = cfg.num_beams, len(prompt)
    device = next(model.parameters()).device
    feed = _Feeder(model)
    sequences = torch.tensor([prompt], dtype=torch.long, device=device)
    scores = torch.zeros(1, device=device)
    new = sequences
    finished: list[tuple[float, list[int]]] = []
    done = False  # stopped early: enough finished hypotheses

    def add(score_sum: float, tokens: list[int]) -> None:
        finished.append((score_sum / max(1, len(tokens) - plen) ** cfg.length_penalty, tokens))
        finished.sort(key=lambda f: -f[0])
        del finished[n:]

    for _step in range(cfg.max_new_tokens):
        logp = feed(new, sequences)  # (live beams, vocab)
        if cfg.no_repeat_ngram_size:
            for b, seq in enumerate(sequences.tolist()):
                for token in banned_tokens(seq, cfg.no_repeat_ngram_size):
                    logp[b, token] = -float("inf")
        vocab = logp.shape[-1]
        candidates = (scores[:, None] + logp).view(-1)
        top = torch.topk(candidates, min(2 * n, candidates.numel()))
        keep_beams, keep_tokens, keep_scores = [], [], []
        for rank, (score, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            if score == -float("inf"):
                break
            beam, token = divmod(index, vocab)
            if token in stop:
                if rank < n:  # as Hugging Face: a stop token outside the best num_beams is not a hypothesis
                    add(score, [*sequences[beam].tolist(), token])
                continue
            keep_beams.append(beam)
            keep_tokens.append(token)
            keep_scores.append(score)
            if len(keep_beams) == n:
                break
        if not keep_beams:
            break
        beams = torch.tensor(keep_beams, device=device)
        feed.reorder(beams)
        new = torch.tensor(keep_tokens, device=device)[:, None]
        sequences = torch.cat([sequences[beams], new], dim=1)
        scores = torch.tensor(keep_scores, device=device)
        if len(finished) == n:
            generated = sequences.shape[1] - plen
            best_live = float(scores.max()) / generated ** cfg.length_penalty
            if cfg.early_stopping or finished[-1][0] >= best_live:
                done = True
                break
    if not done:  # ran to max_new_tokens: the beams still live compete too
        for score, seq in zip(scores.tolist(), sequences.tolist()):
            add(score, seq)
    best_score, best = finished[0]
    return best[plen:], best_score


def generate(model, prompt: list[int], cfg: GenerationConfig, stop: set[int] = frozenset()) -> list[int]:
    """The generated tokens (without the prompt), by beam search when num_beams > 1."""
    if cfg.num_beams > 1:
        return beam_search(model, prompt, cfg, stop)[0]
    return list(stream(model, prompt, cfg, stop))


def prompt_ids(tokenizer, text: str, chat: bool = False, system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt; in chat mode, rendered as a user turn followed by the assistant's cue."""
    if chat:
        from tasks.sft import render

        return render([{"role": "user", "content": text}], tokenizer, system_prompt, add_generation_prompt=True)[0]
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return ids or [tokenizer.token_to_id("<|endoftext|>")]


def stop_ids(tokenizer, chat: bool) -> set[int]:
    ids = {tokenizer.token_to_id("<|endoftext|>")}
    if chat:
        ids.add(tokenizer.token_to_id("<|end|>"))
    return ids


def decode(tokenizer, ids: list[int], stop: set[int] = frozenset()) -> str:
    return tokenizer.decode([i for i in ids if i not in stop], skip_special_tokens=False)


def stream_text(model, tokenizer, prompt: list[int], cfg: GenerationConfig, stop: set[int] = frozenset()
                ) -> Iterator[str]:
    """The generated text in pieces as tokens decode (sampling or greedy); a piece that ends inside a
    multi-byte character waits for the rest of it."""
    shown, tokens = "", []
    for token in stream(model, prompt, cfg, stop):
        tokens.append(token)
        text = decode(tokenizer, tokens, stop)
        if not text.endswith("\ufffd"):
            yield text[len(shown):]
            shown = text
