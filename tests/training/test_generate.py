"""Generation: the KV cache changes nothing, beam search finds what brute force finds, sampling filters."""

import itertools

import pytest
import torch
from torch.nn import functional as F

from training.generate import GenerationConfig, banned_tokens, beam_search, generate, stream
from training.model import GPT, GPTConfig

V = 6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # sharper distributions than the initialization gives, so beams differ
        m.transformer.wte.weight.mul_(8)
    return m


def test_kv_cache_gives_the_same_logits(model):
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache()
        parts = [model(x[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 9), (9, 10), (10, 20))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def _brute_force(model, prompt, steps, stop, length_penalty, no_repeat):
    """Every continuation of up to `steps` tokens (ending at a stop token, or at `steps`), scored as beam search scores."""
    best = (-float("inf"), None)
    for length in range(1, steps + 1):
        for seq in itertools.product(range(V), repeat=length):
            if any(t in stop for t in seq[:-1]) or (length < steps and seq[-1] not in stop):
                continue
            full = prompt + list(seq)
            if no_repeat and any(seq[i] in banned_tokens(full[:len(prompt) + i], no_repeat) for i in range(length)):
                continue
            with torch.no_grad():
                logp = F.log_softmax(model(torch.tensor([full]))[0][0], dim=-1)
            total = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(seq))
            best = max(best, (total / length ** length_penalty, list(seq)))
    return best


@pytest.mark.parametrize("stop,length_penalty,no_repeat", [(set(), 1.0, 0), ({5}, 1.0, 0), ({5}, 2.0, 0),
                                                           ({5}, 0.5, 0), (set(), 1.0, 2)])
def test_beam_search_with_enough_beams_is_exhaustive(model, stop, length_penalty, no_repeat):
    prompt, steps = [1, 2, 1], 4
    cfg = GenerationConfig(max_new_tokens=steps, num_beams=V ** steps, length_penalty=length_penalty,
                           no_repeat_ngram_size=no_repeat)
    tokens, score = beam_search(model, prompt, cfg, stop)
    expected_score, expected = _brute_force(model, prompt, steps, stop, length_penalty, no_repeat)
    assert tokens == expected
    assert score == pytest.approx(expected_score, abs=1e-4)


def test_narrow_beams_do_no_better_than_brute_force_and_at_least_greedy(model):
    prompt = [3, 1]
    greedy = generate(model, prompt, GenerationConfig(max_new_tokens=4))
    best_score, _ = _brute_force(model, prompt, 4, set(), 1.0, 0)
    for beams in (1, 2, 3):
        _, score = beam_search(model, prompt, GenerationConfig(max_new_tokens=4, num_beams=beams), set())
        assert score <= best_score + 1e-5
    _, one_beam = beam_search(model, prompt, GenerationConfig(max_new_tokens=4, num_beams=1), set())
    assert beam_search(model, prompt, GenerationConfig(max_new_tokens=4, num_beams=1), set())[0] == greedy
    assert one_beam <= beam_search(model, prompt, GenerationConfig(max_new_tokens=4, num_beams=3), set())[1] + 1e-6


def test_no_repeat_ngram_and_early_stopping(model):
    out = generate(model, [0], GenerationConfig(max_new_tokens=20, no_repeat_ngram_size=2))
    seq = [0, *out]
    bigrams = list(itertools.pairwise(seq))
    assert len(bigrams) == len(set(bigrams))
    early = beam_search(model, [1], GenerationConfig(max_new_tokens=20, num_beams=2, early_stopping=True), {5})[0]
    assert len(early) <= 20
    assert banned_tokens([1, 2, 3, 1, 2], 3) == {3} and banned_tokens([1, 2], 3) == set()


def test_sampling_is_seeded_streams_and_respects_top_k_and_stop(model):
    cfg = GenerationConfig(max_new_tokens=20, temperature=1.0, top_k=2, seed=7)
    first = list(stream(model, [1, 2], cfg))
    assert first == list(stream(model, [1, 2], cfg))  # same seed, same text
    assert len(first) == 20
    with torch.no_grad():  # top-k 2: every sampled token is one of the two likeliest at its position
        logits = model(torch.tensor([[1, 2, *first]]))[0][0]
    for i, token in enumerate(first):
        assert token in torch.topk(logits[1 + i], 2).indices.tolist()
    tokens = list(stream(model, [1], GenerationConfig(max_new_tokens=200, temperature=1.0, seed=1), stop={4}))
    assert tokens[-1] == 4 or len(tokens) == 200
    assert 4 not in tokens[:-1]
    nucleus = list(stream(model, [1], GenerationConfig(max_new_tokens=40, temperature=1.0, top_p=0.01, seed=3)))
    assert nucleus == generate(model, [1], GenerationConfig(max_new_tokens=40))  # a tiny nucleus is greedy


def test_generation_runs_past_the_context_window(model):
    assert len(generate(model, [1, 2, 3], GenerationConfig(max_new_tokens=60))) == 60  # block_size is 24


def test_beam_search_matches_transformers_with_and_without_early_stopping():
    """The same random models as Hugging Face GPT-2: beam search returns the same tokens as transformers'
    `generate` for every combination of early stopping, length penalty, beam width and stop token
    (with early stopping, beams still running when the search ends do not compete)."""
    transformers = pytest.importorskip("transformers")

    from training.export import hf_config

    compared = 0
    for seed in range(8):
        torch.manual_seed(seed)
        cfg = GPTConfig(vocab_size=12, block_size=32, n_layer=2, n_head=2, n_embd=16)
        ours = GPT(cfg).eval()
        with torch.no_grad():
            ours.transformer.wte.weight.mul_(6)  # sharper distributions: beams that finish early differ
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg.__dict__, eot_id=11))).eval()
        hf.load_state_dict(ours.hf_gpt2_state_dict(), strict=False)
        prompt = torch.randint(0, 11, (3,)).tolist()
        for early in (True, False):
            for penalty in (0.5, 1.0, 2.0):
                for beams in (2, 3):
                    mine, _ = beam_search(ours, prompt, GenerationConfig(max_new_tokens=8, num_beams=beams,
                                                                         length_penalty=penalty,
                                                                         early_stopping=early), {11})
                    with torch.no_grad():
                        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=8, num_beams=beams,
                                             length_penalty=penalty, early_stopping=early, do_sample=False,
                                             eos_token_id=11, pad_token_id=11)[0, len(prompt):].tolist()
                    while theirs and theirs[-1] == 11 and len(theirs) > len(mine):  # padding after the end
                        theirs.pop()
                    assert mine == theirs, (seed, early, penalty, beams)
                    compared += 1
    assert compared == 96
