"""Fine-tuning: instruction records become masked, packed rows; each mode changes only what it should;
checkpoints export to Hugging Face GPT-2 with the same logits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.ingest import Ingest
from tasks.sft import SftTokenize, instruction_record, pack, render, to_messages
from tasks.shards import read_dir
from tasks.stage import local_mapper, run_stage
from tasks.tokenize import Tokenize, load_tokenizer
from training.checkpoint import resolve_checkpoint
from training.data import SftData
from training.generate import GenerationConfig, generate, stop_ids
from training.launch import FinetuneConfig, PretrainConfig, finetune_worker_config, worker_config
from training.load import load_model, load_weights

ROOT = Path(__file__).resolve().parents[2]


def _train(config: dict, path: Path) -> None:
    path.write_text(config.model_dump_json())
    proc = subprocess.run([sys.executable, "-m", "training.train", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def pretrained(shared, tmp_path_factory):
    """A tiny GPT pretrained for 20 steps on tinyshakespeare (BPE of 1,024 tokens)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    paragraphs = [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    with open(tmp / "plays.jsonl", "w") as f:
        for i, p in enumerate(paragraphs[:4000]):
            f.write(json.dumps({"id": f"p{i}", "text": p}) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp / "01", inputs=[str(tmp / "plays.jsonl")], mapper=local_mapper(1))
    run_stage(Tokenize(vocab_size=1024), run_id="t", stage_dir=tmp / "tokens", inputs=[str(tmp / "01")],
              mapper=local_mapper(1))
    cfg = PretrainConfig(steps=20, eval_every=20, ckpt_every=20, log_every=10)
    _train(worker_config(cfg, tmp / "tokens", tmp / "train", 1024, use_gpu=False), tmp / "pretrain.json")
    return resolve_checkpoint(tmp / "train")


@pytest.fixture(scope="module")
def sft_rows(shared, pretrained, tmp_path_factory):
    """GSM8K and alpaca-libre (with its malformed lines and flagged records) through the ingest
    reader and the SFT stage."""
    tmp = tmp_path_factory.mktemp("sft")
    inputs = [str(shared / "sft/gsm8k/train.jsonl"), str(shared / "sft/alpaca_libre/alpaca_libre_tasks_v2.jsonl")]
    ingest = run_stage(Ingest(adapter=instruction_record), run_id="t", stage_dir=tmp / "01", inputs=inputs,
                       mapper=local_mapper(2))
    sft = run_stage(SftTokenize(tokenizer=str(pretrained / "tokenizer.json"), block_size=128, val_fraction=0.05),
                    run_id="t", stage_dir=tmp / "sft", inputs=[str(tmp / "01")], mapper=local_mapper(1))
    return tmp, ingest.manifest, sft.manifest


def test_instruction_shapes_become_conversations_and_bad_records_are_rejects(sft_rows, shared):
    tmp, ingest, _ = sft_rows
    gsm8k = (shared / "sft/gsm8k/train.jsonl").read_text().count("\n")
    assert ingest.rows_out > gsm8k  # every GSM8K problem and the clean Alpaca records
    assert ingest.rejected["malformed_json"] == 14  # alpaca-libre v2's malformed lines, as SOURCES.md says
    assert ingest.rejected["flagged_status"] > 0  # status != "ok"
    rejects = read_dir(tmp / "01/_rejects")
    assert set(rejects.column("reason").to_pylist()) == set(ingest.rejected)
    assert to_messages({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})[1] \
        == {"role": "assistant", "content": "yo"}
    assert to_messages({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})[0]["role"] \
        == "user"
    assert to_messages({"instruction": "Add.", "input": "2 and 3", "output": "5"})[0]["content"] == "Add.\n\n2 and 3"
    for bad, reason in [({"text": "plain"}, "not_instruction"), ({"messages": []}, "bad_messages"),
                        ({"question": "q?", "answer": " "}, "empty_text"),
                        ({"messages": [{"role": "user", "content": "only a question"}]}, "no_response")]:
        with pytest.raises(ValueError) as info:
            to_messages(bad)
        assert info.value.reason == reason


def test_loss_mask_covers_exactly_the_responses(pretrained):
    tokenizer = load_tokenizer(pretrained / "tokenizer.json")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "And 3 + 3?"},
                {"role": "assistant", "content": "6, of course."}]
    ids, mask = render(messages, tokenizer)
    learned = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert learned == "It is 4.<|end|>6, of course.<|end|>"  # responses and the <|end|> that closes each
    prompt = tokenizer.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False)
    assert "What is 2 + 2?" in prompt and "Be brief." in prompt and "It is 4" not in prompt
    # the generation prompt tokenizes exactly as the same conversation did in training
    cue = render(messages[:2], tokenizer, add_generation_prompt=True)[0]
    assert ids[:len(cue)] == cue

    rows, masks, dropped = pack([([1, 2, 3], [0, 1, 1]), ([4] * 10, [0] * 10), ([5, 6], [0, 1])], 6, pad_id=0)
    assert dropped == [1]  # nothing to learn: goes to _removed
    assert rows.tolist() == [[1, 2, 3, 5, 6, 0]] and masks.tolist() == [[0, 1, 1, 0, 1, 0]]


def test_packed_rows_and_targets(sft_rows):
    tmp, _, manifest = sft_rows
    index = json.loads((tmp / "sft/index.json").read_text())
    assert index["row_len"] == 129 and index["totals"]["train"] > 1000 and index["totals"]["val"] > 10
    data = SftData(tmp / "sft", "train", 128)
    x, y = data.batch(8, seed=0, step=3)
    assert x.shape == y.shape == (8, 128)
    assert (y >= 0).any() and (y == -1).any()  # prompts masked, responses learned
    again = data.batch(8, seed=0, step=3)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])  # data position is a pure function
    assert manifest.rows_in == manifest.rows_out + sum(manifest.removed.values())
    assert (tmp / "sft/val_examples.jsonl").read_text().count("\n") == manifest.stats["val_examples"]


@pytest.fixture(scope="module")
def finetuned(pretrained, sft_rows, tmp_path_factory):
    """The pretrained model fine-tuned for 6 steps in each mode (one DeepSpeed worker, no Ray)."""
    tmp = tmp_path_factory.mktemp("finetuned")
    sft_dir = sft_rows[0] / "sft"
    out = {}
    for mode in ("full", "frozen", "lora"):
        cfg = FinetuneConfig(mode=mode, steps=6, eval_every=6, ckpt_every=6, log_every=3, micro_batch=4,
                             trainable_blocks=1, lora_rank=4, lr=3e-3)
        _train(finetune_worker_config(cfg, pretrained, sft_dir, tmp / mode, use_gpu=False), tmp / f"{mode}.json")
        out[mode] = tmp / mode
    return out


def _changed(pretrained: Path, finetuned: Path) -> tuple[set[str], dict]:
    base = load_weights(pretrained)
    after = load_weights(resolve_checkpoint(finetuned))
    def same_weight(name: str) -> torch.Tensor:  # LoRA keeps a wrapped layer's weights under .base.
        return after[name] if name in after else after[".base.".join(name.rsplit(".", 1))]

    return {k for k in base if not torch.equal(base[k], same_weight(k))}, after


def test_full_finetuning_changes_every_weight(pretrained, finetuned):
    changed, _after = _changed(pretrained, finetuned["full"])
    assert changed == set(load_weights(pretrained))
    info = json.loads((finetuned["full"] / "run_info.json").read_text())
    assert info["trainable_params"] == info["total_params"]


def test_frozen_finetuning_changes_only_the_last_block_and_the_head(pretrained, finetuned):
    changed, _ = _changed(pretrained, finetuned["frozen"])
    assert changed  # it trained
    allowed = ("transformer.h.1.", "transformer.ln_f.", "lm_head.", "transformer.wte.")  # tiny: 2 blocks
    assert all(k.startswith(allowed) for k in changed), sorted(changed)
    assert not any(k.startswith(("transformer.h.0.", "transformer.wpe.")) for k in changed)
    info = json.loads((finetuned["frozen"] / "run_info.json").read_text())
    # frozen parameters are not handed to the optimizer: the trainable count is what Adam holds
    assert info["trainable_params"] < info["total_params"]
    assert all(n.startswith(allowed) for n in info["trainable_names"])


def test_lora_changes_only_the_adapters_and_merges_on_load(pretrained, finetuned):
    changed, after = _changed(pretrained, finetuned["lora"])
    base = load_weights(pretrained)
    adapted = {k: v for k, v in after.items() if k not in base}
    assert changed == set()  # base weights (kept under their own names in the module) are untouched
    assert all(".base." in k or ".lora_" in k for k in adapted)
    for name, tensor in after.items():
        if ".base." in name:
            assert torch.equal(tensor, base[name.replace(".base.", ".")])
    assert any(k.endswith("lora_B") and tensor.abs().sum() > 0 for k, tensor in adapted.items())  # B left zero
    merged, info, _ = load_model(resolve_checkpoint(finetuned["lora"]))
    assert info["finetune"]["mode"] == "lora"
    plain = merged.state_dict()
    assert set(plain) == set(base)  # merged back into a plain GPT
    assert not torch.equal(plain["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])
    unmerged, _, _ = load_model(resolve_checkpoint(finetuned["lora"]), merge=False)
    x = torch.randint(0, 1024, (2, 32))
    with torch.no_grad():
        assert torch.allclose(merged(x)[0], unmerged(x)[0], atol=1e-4)


def test_export_round_trip_to_hugging_face(finetuned, tmp_path):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from training.export import export_hf, export_pt

    for mode in ("full", "lora"):
        out = export_hf(resolve_checkpoint(finetuned[mode]), tmp_path / mode)
        hf = GPT2LMHeadModel.from_pretrained(out).eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
        ours, _, ours_tokenizer = load_model(resolve_checkpoint(finetuned[mode]))
        text = "ROMEO: What is 7 plus 5?"
        ids = tokenizer(text, return_tensors="pt").input_ids
        assert ids[0].tolist() == ours_tokenizer.encode(text).ids
        with torch.no_grad():
            np.testing.assert_allclose(hf(ids).logits.numpy(), ours(ids)[0].numpy(), atol=1e-4)
        assert tokenizer.convert_tokens_to_ids("<|end|>") == ours_tokenizer.token_to_id("<|end|>")
        # a chat prompt: the template gives loom's ids, and generation stops where `loom generate --chat` stops
        messages = [{"role": "user", "content": "What is 7 plus 5?"}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
        assert list(prompt) == render(messages, ours_tokenizer, add_generation_prompt=True)[0]
        cfg = GenerationConfig(max_new_tokens=24)
        loom_says = generate(ours, list(prompt), cfg, stop_ids(ours_tokenizer, chat=True))
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([list(prompt)]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
        assert theirs.tolist() == loom_says  # both end at <|end|> (or run to the limit alike)
        card = (out / "README.md").read_text()
        assert card.startswith("---") and "## Training" in card and "## Limitations" in card
        assert all(p.stat().st_mode & 0o444 == 0o444 for p in out.iterdir())
    path = export_pt(resolve_checkpoint(finetuned["frozen"]), tmp_path / "frozen.pt")
    saved = torch.load(path)
    from training.model import GPT, GPTConfig

    model = GPT(GPTConfig(**saved["model"]))
    model.load_state_dict(saved["state_dict"])
    assert all(t.dtype == torch.float32 for t in saved["state_dict"].values())


def _sft_metrics(out: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "frozen", "lora"])
def test_zero3_finetuning_trains_resumes_exactly_and_exports(pretrained, sft_rows, tmp_path, mode):
    """Under ZeRO-3 (parameters partitioned), each fine-tuning mode trains; a run interrupted after step 5
    resumes from its step-3 checkpoint and computes steps 4 and 5 again with the same losses (weights and
    optimizer state carried over exactly); the partitioned checkpoint exports to Hugging Face with the
    logits Loom's own loader gives."""
    from transformers import GPT2LMHeadModel

    from training.export import export_hf

    cfg = FinetuneConfig(mode=mode, steps=6, eval_every=6, ckpt_every=3, log_every=1, micro_batch=4,
                         trainable_blocks=1, lora_rank=4, lr=3e-3, deepspeed=str(ROOT / "infra/deepspeed/zero3.json"))
    out = tmp_path / "run"
    for stop in (5, None):  # interrupted after step 5 (checkpoint at 3), then resumed
        _train(finetune_worker_config(cfg, pretrained, sft_rows[0] / "sft", out, use_gpu=False, stop_after=stop),
               tmp_path / f"run-{stop}.json")
    metrics = _sft_metrics(out)
    assert [step for step, _ in metrics] == [1, 2, 3, 4, 5, 4, 5, 6]
    first, again = dict(metrics[:5]), dict(metrics[5:])
    assert all(abs(first[s] - again[s]) <= 1e-6 * abs(first[s]) for s in (4, 5)), metrics
    tag = resolve_checkpoint(out)
    assert any(tag.glob("zero_pp_rank_*_model_states.pt"))  # partitioned, as ZeRO-3 saves
    changed, after = _changed(pretrained, out)
    if mode == "lora":  # the base weights stay; the adapters learned
        assert not changed and any(k.endswith("lora_B") and t.abs().sum() > 0 for k, t in after.items())
    else:
        assert changed and (mode == "full") == (len(changed) == len(load_weights(pretrained)))
    ours, _, _ = load_model(tag)
    hf = GPT2LMHeadModel.from_pretrained(export_hf(tag, tmp_path / "hf")).eval()
    ids = torch.randint(0, 1024, (1, 24))
    with torch.no_grad():
        np.testing.assert_allclose(hf(ids).logits.numpy(), ours(ids)[0].numpy(), atol=1e-4)
