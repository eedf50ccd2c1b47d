"""training/model.py: shapes, initial loss, tied embeddings, parameter counts, GPT-2 layout."""

import math

import pytest
import torch

from training.model import GPT, NAMED_CONFIGS, GPTConfig


def test_forward_initial_loss_and_tied_embeddings():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 32))
    logits, loss = model(idx, torch.randint(0, cfg.vocab_size, (3, 32)))
    assert logits.shape == (3, 32, 512)
    assert abs(loss.item() - math.log(512)) < 0.3  # GPT-2 init: near-uniform predictions
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_causality_later_tokens_do_not_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    a = torch.randint(0, 100, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 100
    assert torch.allclose(model(a)[0][0, :10], model(b)[0][0, :10], atol=1e-5)


def test_named_configs_have_their_published_sizes():
    assert 123e6 < NAMED_CONFIGS["gpt2"].num_params() < 125e6  # GPT-2 small, vocab padded to 50,304
    assert 350e6 < NAMED_CONFIGS["gpt2-medium"].num_params() < 357e6
    cfg = NAMED_CONFIGS["gpt2"]
    assert cfg.flops_per_token() == 6 * (cfg.num_params() - 1024 * 768) + 12 * 12 * 768 * 1024  # head counted


def test_hf_gpt2_layout():
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=8))
    hf = model.hf_gpt2_state_dict()
    expected = {"transformer.wte.weight": (64, 8), "transformer.wpe.weight": (8, 8),
                "transformer.h.0.ln_1.weight": (8,), "transformer.h.0.attn.c_attn.weight": (8, 24),
                "transformer.h.0.attn.c_attn.bias": (24,), "transformer.h.0.attn.c_proj.weight": (8, 8),
                "transformer.h.0.mlp.c_fc.weight": (8, 32), "transformer.h.0.mlp.c_proj.weight": (32, 8),
                "transformer.ln_f.weight": (8,), "lm_head.weight": (64, 8)}
    for name, shape in expected.items():
        assert tuple(hf[name].shape) == shape, name
