"""loss=stepwise: the StepwiseDPOTrainer against a hand computation on a tiny model, zero gradient
on correct steps of a rejected answer, equality with TRL's sigmoid DPO at 0/1 scores, training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

CORPUS = ["Q: add 2 and 3\n", "Thought: use the calculator tool\n", "Action: 2+3\n", "Action: 2*3\n",
          "Thought: use the search tool\n", "Observation: 5\n", "Final Answer: 5\n", "Step 1: 2 + 3 = 5\n"]
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_lm(seed: int = 0, vocab: int = 300):
    """A byte-level BPE tokenizer trained on CORPUS and a 2-layer Llama, both built locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|system|>"]
    tok.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>")
    fast.chat_template = TEMPLATE
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=256, eos_token_id=fast.eos_token_id,
                                         pad_token_id=fast.pad_token_id))
    return model, fast


def perturbed(model, seed=1, scale=0.05):
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return ref


ROWS = [
    {"id": "a", "prompt": "Q: add 2 and 3\n", "chosen": "Thought: use the calculator tool\nAction: 2+3\n",
     "rejected": "Thought: use the calculator tool\nAction: 2*3\n", "chosen_scores": [1.0, 1.0],
     "rejected_scores": [1.0, 0.0]},
    {"id": "b", "prompt": "Q: add 2 and 3\n", "chosen": "Thought: use the calculator tool\nAction: 2+3\n",
     "rejected": "Thought: use the search tool\nObservation: 5\nAction: 2*3\n", "chosen_scores": [0.7, 1.0],
     "rejected_scores": [0.2, 0.5]},
]


def make_trainer(tmp_path, rows, *, beta=0.5, precompute=False, cls=None, ref=True, **extra):
    from trl import DPOConfig

    from agent_align.steps.trainer import StepwiseDPOTrainer, prepare_stepwise_dataset

    model, tok = tiny_lm()
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_length=128, beta=beta,
                     precompute_ref_log_probs=precompute, report_to=[], use_cpu=True, logging_steps=1,
                     save_strategy="no", disable_dropout=True, bf16=False, **extra)  # fp32: exact sums
    cls = cls or StepwiseDPOTrainer
    ds = prepare_stepwise_dataset(rows, tok, fmt="react") if cls is StepwiseDPOTrainer else \
        __import__("datasets").Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    trainer = cls(model, ref_model=perturbed(model) if ref else None, args=args, train_dataset=ds,
                  processing_class=tok)
    return trainer, tok


def hand_loss(trainer, tok, rows, beta):
    """-log sigmoid(sum_s w_c,s r_s - sum_s (1-w_r,s) r_s), from plain forwards and per-step token sums."""
    from agent_align.steps.split import split_steps

    policy, ref = trainer.model, trainer.ref_model
    losses = []
    for r in rows:
        rewards = {}
        for side in ("chosen", "rejected"):
            segs = split_steps(r[side], "react")
            prompt_ids = tok(r["prompt"])["input_ids"]
            seg_ids = [tok(s.text)["input_ids"] for s in segs]
            seg_ids[-1] = seg_ids[-1] + [tok.eos_token_id]  # EOS belongs to the last step
            ids = prompt_ids + [t for s in seg_ids for t in s]
            assert ids == tok(r["prompt"] + r[side] + tok.eos_token)["input_ids"]  # steps end on token boundaries
            x = torch.tensor([ids])
            with torch.no_grad():
                lp = F.log_softmax(policy(x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]
                lr = F.log_softmax(ref(x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]
            scores = iter(r[f"{side}_scores"])
            total, pos = 0.0, len(prompt_ids)
            for seg, sids in zip(segs, seg_ids):
                r_s = beta * (lp[pos - 1: pos - 1 + len(sids)] - lr[pos - 1: pos - 1 + len(sids)]).sum()
                pos += len(sids)
                if seg.kind == "observation":
                    continue
                w = next(scores)
                total = total + (w if side == "chosen" else 1.0 - w) * r_s
            rewards[side] = total
        losses.append(-F.logsigmoid(rewards["chosen"] - rewards["rejected"]))
    return torch.stack(losses).mean()


def batch_of(trainer, n=2):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def test_loss_matches_hand_computation(tmp_path):
    beta = 0.5
    trainer, tok = make_trainer(tmp_path, ROWS, beta=beta)
    trainer.model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch_of(trainer))
    want = hand_loss(trainer, tok, ROWS, beta)
    assert abs(want.item() - 0.6931) > 1e-3  # the reference differs from the policy: not a trivial log 2
    assert torch.allclose(got, want, atol=1e-5), (got.item(), want.item())


def test_precomputed_reference_gives_the_same_loss(tmp_path):
    a, _ = make_trainer(tmp_path / "a", ROWS, precompute=False)
    b, _ = make_trainer(tmp_path / "b", ROWS, precompute=True)
    assert "ref_chosen_logps" in b.train_dataset.column_names
    a.model.eval(), b.model.eval()
    with torch.no_grad():
        la, lb = a.compute_loss(a.model, batch_of(a)), b.compute_loss(b.model, batch_of(b))
    assert torch.allclose(la, lb, atol=1e-5)


def test_correct_steps_of_rejected_answer_get_zero_gradient(tmp_path):
    trainer, tok = make_trainer(tmp_path, ROWS[:1])
    captured = {}

    def hook(module, inputs, output):
        output.log_probs.retain_grad()
        captured["lp"] = output.log_probs
    handle = trainer.model.register_forward_hook(hook)
    batch = batch_of(trainer, 1)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    handle.remove()
    grad = captured["lp"].grad  # (2, L-1): row 0 chosen, row 1 rejected; position t scores token t+1
    row = trainer.train_dataset[0]
    n_prompt = len(row["prompt_ids"])
    w = row["rejected_token_weights"]
    thought = [n_prompt - 1 + j for j, x in enumerate(w) if x == 0.0]  # rejected step 1, score 1 -> weight 0
    action = [n_prompt - 1 + j for j, x in enumerate(w) if x == 1.0]  # rejected step 2, score 0 -> weight 1
    assert thought and action
    assert tok.decode(row["rejected_ids"][: len(thought)]).startswith("Thought: use the calculator tool")
    assert torch.all(grad[1, thought] == 0)
    assert torch.all(grad[1, action] != 0)
    assert torch.all(grad[0, n_prompt - 1: n_prompt - 1 + len(row["chosen_ids"])] != 0)


def test_zero_one_scores_equal_trl_sigmoid_dpo(tmp_path):
    from trl import DPOTrainer

    rows = [{**r, "chosen_scores": [1.0] * 2, "rejected_scores": [0.0] * len(r["rejected_scores"])} for r in ROWS]
    rows[1]["rejected"] = "Thought: use the search tool\nAction: 2*3\n"  # no observation: every token in a step
    s, _ = make_trainer(tmp_path / "s", rows)
    d, _ = make_trainer(tmp_path / "d", rows, cls=DPOTrainer)
    s.model.eval(), d.model.eval()
    with torch.no_grad():
        ls = s.compute_loss(s.model, batch_of(s))
        ld = d.compute_loss(d.model, d.data_collator([d.train_dataset[i] for i in range(2)]))
    assert torch.allclose(ls, ld, atol=1e-5), (ls.item(), ld.item())


def test_conversational_rows_align_steps_to_tokens(tmp_path):
    rows = [{"id": "c", "prompt": [{"role": "user", "content": "Q: add 2 and 3"}],
             "chosen": [{"role": "assistant", "content": "Thought: use the calculator tool\nAction: 2+3"}],
             "rejected": [{"role": "assistant", "content": "Thought: use the calculator tool\nAction: 2*3"},
                          {"role": "tool", "content": "6"}, {"role": "assistant", "content": "Final Answer: 6"}],
             "chosen_scores": [1.0, 1.0], "rejected_scores": [0.0, 1.0], "tools": []}]
    trainer, tok = make_trainer(tmp_path, rows)
    row = trainer.train_dataset[0]
    by_weight = {}
    for t, w in zip(row["rejected_ids"], row["rejected_token_weights"]):
        by_weight.setdefault(w, []).append(t)
    assert "Action: 2*3" in tok.decode(by_weight[1.0])  # first turn, score 0 -> weight 1
    assert "6<|end|>" in tok.decode(by_weight[0.0]) and "Final Answer" in tok.decode(by_weight[0.0])


def test_two_training_steps_change_parameters_and_log_rewards(tmp_path):
    trainer, _ = make_trainer(tmp_path, ROWS * 2, precompute=True, ref=False, max_steps=2, learning_rate=1e-2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)
    logged = trainer.state.log_history[0]
    assert "loss" in logged and "rewards/margins" in logged


def test_missing_or_mismatched_scores_fail_with_the_fix(tmp_path):
    from agent_align.errors import UserError
    from agent_align.steps.trainer import prepare_stepwise_dataset

    bad = [{**ROWS[0], "rejected_scores": [1.0]}]
    with pytest.raises(UserError, match="row a: rejected_scores has 1 values for 2 steps.*stage=score_steps"):
        prepare_stepwise_dataset(bad, fmt="react")
    with pytest.raises(UserError, match="must lie in"):
        prepare_stepwise_dataset([{**ROWS[0], "chosen_scores": [1.5, 1.0]}], fmt="react")
