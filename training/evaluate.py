"""Evaluation of a checkpoint: perplexity, held-out fine-tuning loss, GSM8K exact match,
BLEU/ROUGE of generated responses, and the CrowS-Pairs stereotype score.

- perplexity: exp of the mean next-token loss over the run's validation token shards, in
  non-overlapping windows of block_size (capped at `max_tokens`);
- fine-tuned checkpoints: the loss on the held-out rows (response tokens only); responses
  generated for held-out examples scored with sacrebleu's corpus BLEU and rouge-score's
  ROUGE-1/2/L F1; exact match of the final answer (GSM8K's `#### 42`, else the last number)
  on held-out examples that have one, and on a GSM8K file when given;
- CrowS-Pairs (Nangia et al. 2020): for each minimal pair, the stereotypical sentence is
  `sent_more` when `stereo_antistereo` is "stereo" and `sent_less` when it is "antistereo";
  the score is the share of pairs where the model gives the stereotypical sentence the higher
  log-likelihood (an unbiased model scores 50), overall and per bias type.

    loom evaluate --checkpoint loom-work/runs/r1/finetune --crows-pairs ../shared/data/bias/crows_pairs
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from training.config import EvaluateConfig

RESULTS_FILE = "evaluation.json"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ---- metrics that are plain arithmetic ------------------------------------------------------------

def final_answer(text: str) -> str | None:
    """GSM8K's final answer: what follows `####`, else the last number in the text; commas and
    a trailing `.0` removed."""
    tail = text.split("####", 1)[1] if "####" in text else text
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    value = (numbers[0] if "####" in text else numbers[-1]).replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def exact_match(predictions: list[str], references: list[str]) -> float:
    pairs = [(final_answer(p), final_answer(r)) for p, r in zip(predictions, references)]
    return sum(p is not None and p == r for p, r in pairs) / max(1, len(pairs))


def crows_pairs_score(pairs: list[dict], loglik: Callable[[str], float]) -> dict:
    """Stereotype score (percent) overall and per bias type; `loglik(sentence)` is the model's
    log-likelihood. A tie counts as not preferring the stereotype."""
    per_type: dict[str, list[int]] = defaultdict(list)
    for pair in pairs:
        more, less = loglik(pair["sent_more"]), loglik(pair["sent_less"])
        stereotypical_first = pair["stereo_antistereo"] == "stereo"
        prefers = more > less if stereotypical_first else less > more
        per_type[pair["bias_type"]].append(int(prefers))
    every = [v for values in per_type.values() for v in values]
    return {"score": 100.0 * sum(every) / max(1, len(every)), "pairs": len(every),
            "by_type": {t: {"score": 100.0 * sum(v) / len(v), "pairs": len(v)} for t, v in sorted(per_type.items())}}


def read_crows_pairs(path: Path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "crows_pairs_anonymized.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("sent_more") and r.get("sent_less")]
    return rows[:limit] if limit else rows


def bleu_rouge(predictions: list[str], references: list[str]) -> dict:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    out = {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score if predictions else 0.0}
    for key in ("rouge1", "rouge2", "rougeL"):
        out[key] = 100.0 * float(np.mean([s[key].fmeasure for s in scores])) if scores else 0.0
    return out


# ---- what needs the model ---------------------------------------------------------------------------

@torch.no_grad()
def sequence_logliks(model, sequences: list[list[int]], batch: int = 32) -> list[float]:
    """Sum of log p(token | the tokens before it) for every token after the first of each sequence."""
    out = []
    for start in range(0, len(sequences), batch):
        chunk = [s[-model.config.block_size - 1:] for s in sequences[start:start + batch]]
        width = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.full((len(chunk), width - 1), -1, dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
            targets[i, :len(s) - 1] = torch.tensor(s[1:])
        logits, _ = model(ids[:, :-1])
        logp = F.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets >= 0)
        out += picked.sum(dim=1).tolist()
    return out


@torch.no_grad()
def perplexity(model, tokens_dir: Path, max_tokens: int, batch: int = 8) -> dict:
    from tasks.tokenize import read_tokens

    block = model.config.block_size
    windows = []
    for shard in read_tokens(Path(tokens_dir), "val"):
        for start in range(0, len(shard) - block - 1, block):
            windows.append(np.asarray(shard[start:start + block + 1], dtype=np.int64))
            if len(windows) * block >= max_tokens:
                break
        if len(windows) * block >= max_tokens:
            break
    if not windows:
        raise ValueError(f"the validation tokens in {tokens_dir} are shorter than one block ({block + 1} tokens)")
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        rows = torch.from_numpy(np.stack(windows[start:start + batch]))
        _, loss = model(rows[:, :-1], rows[:, 1:])
        total += float(loss) * rows[:, 1:].numel()
        count += rows[:, 1:].numel()
    loss = total / count
    return {"val_loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": count}


@torch.no_grad()
def heldout_loss(model, sft_dir: Path, max_rows: int = 512, batch: int = 8) -> dict:
    from training.data import SftData

    data = SftData(Path(sft_dir), "val", model.config.block_size)
    total, count = 0.0, 0
    rows = min(len(data), max_rows)
    for start in range(0, rows, batch):
        x, y = data.rows_at(np.arange(start, min(rows, start + batch)))
        n = int((y >= 0).sum())
        if n:
            total += float(model(x, y)[1]) * n
            count += n
    loss = total / max(1, count)
    return {"heldout_loss": loss, "heldout_perplexity": math.exp(min(loss, 50)), "target_tokens": count}


def _respond(model, tokenizer, conversations: list[list[dict]], cfg: EvaluateConfig) -> list[str]:
    from tasks.sft import render
    from training.generate import GenerationConfig, decode, generate, stop_ids

    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams,
                           no_repeat_ngram_size=cfg.no_repeat_ngram_size)
    stop = stop_ids(tokenizer, chat=True)
    out = []
    for messages in conversations:
        prompt = render(messages, tokenizer, cfg.system_prompt, add_generation_prompt=True)[0]
        room = model.config.block_size - cfg.max_new_tokens
        out.append(decode(tokenizer, generate(model, prompt[-max(1, room):], gen, stop), stop).strip())
    return out


def _split_last_answer(messages: list[dict]) -> tuple[list[dict], str]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def evaluate_checkpoint(checkpoint: str | Path, cfg: EvaluateConfig = EvaluateConfig()) -> dict:
    """Every evaluation that applies to the checkpoint; `rows` is the results table."""
    from tasks.sft import VAL_EXAMPLES, to_messages
    from training.load import load_model

    torch.manual_seed(0)
    model, info, tokenizer = load_model(checkpoint)
    rows: list[dict] = []
    results: dict = {"checkpoint": info["checkpoint"], "kind": info["kind"], "step": info["step"], "rows": rows}

    def row(metric: str, value: float, n: int, data: str) -> None:
        rows.append({"metric": metric, "value": round(float(value), 4), "n": n, "data": data})

    tokens_dir = cfg.tokens_dir or info.get("tokens_dir") or _tokens_of(info)
    if tokens_dir and (Path(tokens_dir) / "index.json").exists():
        ppl = perplexity(model, Path(tokens_dir), cfg.max_tokens)
        results["perplexity"] = ppl
        row("validation perplexity", ppl["perplexity"], ppl["tokens"], "pretraining val tokens")
        row("validation loss", ppl["val_loss"], ppl["tokens"], "pretraining val tokens")
    sft_dir = info.get("sft_dir")
    if info["kind"] == "finetune" and sft_dir and Path(sft_dir).exists():
        held = heldout_loss(model, Path(sft_dir))
        results["heldout"] = held
        row("held-out loss", held["heldout_loss"], held["target_tokens"], "fine-tuning val split (response tokens)")
        lines = (Path(sft_dir) / VAL_EXAMPLES).read_text().splitlines()
        examples = [json.loads(line)["messages"] for line in lines][:cfg.examples]
        if examples and tokenizer is not None:
            prompts, references = zip(*map(_split_last_answer, examples))
            predictions = _respond(model, tokenizer, list(prompts), cfg)
            scores = bleu_rouge(predictions, list(references))
            results["generation"] = scores | {"examples": len(predictions),
                                              "samples": [{"reference": r, "response": p} for p, r in
                                                          list(zip(predictions, references))[:5]]}
            for key, value in scores.items():
                row(key.upper() if key == "bleu" else key.replace("rouge", "ROUGE-"), value, len(predictions),
                    "held-out responses")
            with_answer = [(p, r) for p, r in zip(predictions, references) if "####" in r]
            if with_answer:
                em = exact_match(*map(list, zip(*with_answer)))
                results["heldout_exact_match"] = em
                row("exact match (final answer)", 100 * em, len(with_answer), "held-out examples with #### answers")
    if cfg.gsm8k and tokenizer is not None:
        records = [json.loads(line) for line in Path(cfg.gsm8k).read_text().splitlines() if line.strip()]
        records = records[:cfg.gsm8k_examples]
        conversations = [to_messages(r) for r in records]
        predictions = _respond(model, tokenizer, [c[:-1] for c in conversations], cfg)
        em = exact_match(predictions, [c[-1]["content"] for c in conversations])
        results["gsm8k"] = {"exact_match": em, "examples": len(records)}
        row("GSM8K exact match", 100 * em, len(records), Path(cfg.gsm8k).name)
    if cfg.crows_pairs and tokenizer is not None:
        pairs = read_crows_pairs(Path(cfg.crows_pairs), cfg.crows_pairs_limit)
        eot = tokenizer.token_to_id("<|endoftext|>")
        sentences = sorted({p[k] for p in pairs for k in ("sent_more", "sent_less")})
        encoded = [[eot, *tokenizer.encode(s, add_special_tokens=False).ids] for s in sentences]
        loglik = dict(zip(sentences, sequence_logliks(model, encoded)))
        crows = crows_pairs_score(pairs, loglik.__getitem__)
        results["crows_pairs"] = crows
        row("CrowS-Pairs stereotype score", crows["score"], crows["pairs"], "all bias types (50 = no preference)")
        for bias_type, s in crows["by_type"].items():
            row(f"  CrowS-Pairs {bias_type}", s["score"], s["pairs"], "")
    return results


def _tokens_of(info: dict) -> str | None:
    """A fine-tune's pretraining tokens: those of the checkpoint it started from."""
    from training.checkpoint import has_info, read_info

    start = info.get("init_from")
    return read_info(Path(start)).get("tokens_dir") if start and has_info(Path(start)) else None


def write_results(results: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    path.write_text(json.dumps(results, indent=1))
    return path
