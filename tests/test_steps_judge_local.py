"""The LM step judge on a local Hugging Face model (scorer=lm scorer.backend=hf), for real: the
embedded tiny model, taught in a second to reply "1.", "0" or "maybe" to three judge prompts, saved,
and loaded back through the pipeline's loader by the judge."""

from __future__ import annotations

import logging

import torch

from tests.conftest import MICRO, compose

ROW = {"prompt": "add 2 and 3"}
COMPLETION = "Step 1: 2 + 3 = 5\nStep 2: 2 * 3 = 5\nStep 3: say hi"
REPLIES = ["1.", "0", "maybe"]  # "1." is how a model ends a sentence; "maybe" holds no score


def teach(model, tok, prompts: list[str], replies: list[str], steps: int = 300) -> float:
    """Fit the model to answer each judge prompt with its reply (then end of turn); returns the loss."""
    from agent_align.generation import encode_prompts
    from agent_align.steps.judge import judge_chat

    p_ids = encode_prompts(tok, [judge_chat(p) for p in prompts])
    seqs = [p + tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p, r in zip(p_ids, replies)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, s) in enumerate(zip(p_ids, seqs)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, len(p):len(s)] = torch.tensor(s[len(p):])
        mask[i, :len(s)] = 1
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    return loss.item()


def test_local_judge_batches_parses_caches_and_falls_back(tmp_path, monkeypatch, caplog):
    from omegaconf import OmegaConf

    import agent_align.generation
    import agent_align.models
    from agent_align.models import load_model_and_tokenizer
    from agent_align.steps.judge import LMJudgeScorer

    # no copy warm-up at build time: the judge is taught its replies below, and the warm-up takes ~20 s here
    cfg = compose(MICRO + [f"run_dir={tmp_path}", "model.copy_warmup_steps=0", "scorer=lm",
                           f"scorer.cache_path={tmp_path / 'judge.sqlite'}", "scorer.unverifiable_score=0.5",
                           "scorer.batch_size=8", "hardware.precision=fp32"])
    model, tok = load_model_and_tokenizer(cfg)  # the embedded tiny model, built from the config
    items = [{"row": ROW, "completion": COMPLETION, "fmt": "text"}]
    prompts = LMJudgeScorer(cfg.scorer, cfg, backend=lambda p: []).prompts_for(ROW, COMPLETION, "text")
    assert len(prompts) == 3 and teach(model, tok, prompts, REPLIES) < 0.05
    judge_dir = tmp_path / "judge"
    model.save_pretrained(judge_dir)
    tok.save_pretrained(judge_dir)
    scorer_cfg = OmegaConf.merge(cfg.scorer, {"model_path": str(judge_dir)})

    batches = []
    original = agent_align.generation.batched.generate_ids

    def counting(model_, tok_, prompt_ids, **kwargs):  # one batched decode per call (compacting or generate)
        batches.append(min(len(prompt_ids), kwargs.get("batch_size", 64)))
        return original(model_, tok_, prompt_ids, **kwargs)
    monkeypatch.setattr(agent_align.generation.batched, "generate_ids", counting)  # what generate() calls

    judge = LMJudgeScorer(scorer_cfg, cfg)
    with caplog.at_level(logging.WARNING, logger="agent_align.steps.judge"):
        assert judge.score(items) == [[1.0, 0.0, 0.5]]  # "1." -> 1, "0" -> 0, "maybe" -> unverifiable_score
    assert batches == [3]  # all three prompts in one generate call
    assert judge.stats == {"requests": 3, "cache_hits": 0, "unparsed": 1}
    assert "1 of 3 judge replies hold no score" in caplog.text and "'maybe'" in caplog.text

    def no_load(*a, **k):
        raise AssertionError("a fully cached file must not load the judge model")
    monkeypatch.setattr(agent_align.models, "load_model_and_tokenizer", no_load)
    again = LMJudgeScorer(scorer_cfg, cfg)
    assert again.score(items) == [[1.0, 0.0, 0.5]]
    assert batches == [3] and again.stats["cache_hits"] == 3 and again.stats["requests"] == 0

    monkeypatch.setattr(agent_align.models, "load_model_and_tokenizer", load_model_and_tokenizer)
    model.save_pretrained(judge_dir)  # the checkpoint is rewritten (a re-trained run): its old replies are stale
    assert LMJudgeScorer(scorer_cfg, cfg).score(items) == [[1.0, 0.0, 0.5]] and batches == [3, 3]
