"""Loss masks for trajectories on a real tokenizer (a BPE trained here) and real chat templates."""

from __future__ import annotations


import pytest

from agent_align.env.masking import IGNORE, encode_conversation, encode_preference, encode_sft_row
from agent_align.errors import UserError
from agent_align.models.templates import chat_template

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|bos|>"]

CONV = [
    {"role": "system", "content": "You are an assistant with tools."},
    {"role": "user", "content": "How many days of leave does Mei Sato get?"},
    {"role": "assistant", "content": '{"tool": "get_employee", "parameters": {"name": "Mei Sato"}}'},
    {"role": "tool", "content": '{"name": "Mei Sato", "country": "Japan"}'},
    {"role": "assistant", "content": '{"tool": "retrieve_documents", "parameters": {"collection": "hr_policies"}}',
     "train": False},
    {"role": "tool", "content": "ERROR invalid_call/missing_required: parameters: 'query' is a required property"},
    {"role": "assistant", "content": '{"tool": "FINAL", "parameters": {"answer": "24"}}'},
]


def make_tokenizer(template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([m["content"] for m in CONV] * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|end|>")
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module", params=["chatml", "builtin"])
def tok(request):
    return make_tokenizer(CHATML if request.param == "chatml" else chat_template("builtin"))


def trained_text(tok, enc) -> str:
    return tok.decode([t for t, m in zip(enc["input_ids"], enc["loss_mask"]) if m])


def test_only_assistant_turns_are_trained_never_observations(tok):
    enc = encode_sft_row({"messages": CONV, "tools": None}, tok)
    text = trained_text(tok, enc)
    assert '"get_employee"' in text and '"FINAL"' in text
    assert "Japan" not in text and "ERROR" not in text and "leave does" not in text  # tool + user text masked
    assert "hr_policies" not in text  # the turn marked train=false
    assert enc["trained_turns"] == [2, 6]
    assert all((lab == IGNORE) != bool(m) for lab, m in zip(enc["labels"], enc["loss_mask"]))
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["loss_mask"])
    # each trained span ends with the turn's end-of-turn token, so the model learns to stop
    end = "<|im_end|>" if "<|im_end|>" in tok.decode(enc["input_ids"]) else "<|end|>"
    assert text.count(end) == 2


def test_mask_history_trains_the_last_turn_only(tok):
    enc = encode_conversation(CONV, tok, mask_history=True)
    text = trained_text(tok, enc)
    assert enc["trained_turns"] == [6] and '"FINAL"' in text and "get_employee" not in text


def test_preference_masks_prompt_and_observations_inside_completions(tok):
    row = {"prompt": CONV[:2], "chosen": CONV[2:4] + CONV[6:], "tools": None,
           "rejected": [CONV[2], CONV[3], {"role": "assistant", "content": '{"tool": "FINAL", "parameters": '
                                                                            '{"answer": "30"}}'}]}
    enc = encode_preference(row, tok)
    n = enc["prompt_length"]
    prompt_only = encode_conversation(CONV[:2], tok)["input_ids"]
    assert enc["chosen_input_ids"][:n] == enc["rejected_input_ids"][:n] == prompt_only[:n] and n >= len(prompt_only) - 1
    for side in ("chosen", "rejected"):
        mask = enc[f"{side}_loss_mask"]
        text = tok.decode([t for t, m in zip(enc[f"{side}_input_ids"], mask) if m])
        assert not any(mask[:n]) and "Japan" not in text and "get_employee" in text
    assert '"30"' in tok.decode([t for t, m in zip(enc["rejected_input_ids"], enc["rejected_loss_mask"]) if m])


def test_max_length_truncates_ids_and_masks_together(tok):
    enc = encode_conversation(CONV, tok, max_length=20)
    assert len(enc["input_ids"]) == len(enc["loss_mask"]) == len(enc["labels"]) == 20


def test_template_that_is_not_prefix_stable_is_rejected():
    unstable = ("{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(UserError, match="not prefix-stable"):
        encode_conversation(CONV, make_tokenizer(unstable))


def test_environment_trajectories_train_on_calls_only(tok):
    from agent_align.agents.policies import GroundTruthExpert
    from agent_align.agents.runner import Runner
    from agent_align.env.environment import OrgEnv, match_judge
    from agent_align.env.preferences import sft_rows, trajectory_pairs
    from tests.conftest import compose

    cfg = compose(["env.n_tasks=20", "agent=expert"])
    with OrgEnv(cfg.env) as org:
        task = next(t for t in org.tasks if t["family"] == "project_head_email" and t["answerable"])
        win = list(Runner(org, None, GroundTruthExpert(), match_judge, cfg.agent).run([(task, 0, "w")]))[0]
    row = sft_rows([win])[0]
    enc = encode_sft_row(row, tok)
    text = trained_text(tok, enc)
    observations = [m["content"] for m in row["messages"] if m["role"] == "tool"]
    assert len(observations) == 3 and len(enc["trained_turns"]) == 4
    assert not any(o[:40] in text for o in observations) and task["answer"] in text
    lose = {**win, "sample_id": "l", "success": False, "steps": [dict(s, progress=False) for s in win["steps"]]}
    pair = encode_preference(trajectory_pairs([win, lose], True, 1)[0], tok)
    chosen = tok.decode([t for t, m in zip(pair["chosen_input_ids"], pair["chosen_loss_mask"]) if m])
    assert '"retrieve_documents"' in chosen and not any(o[:40] in chosen for o in observations)


def test_preference_example_splits_at_the_shared_prompt_and_keeps_the_masks(tok):
    """The dpo stage's columns rebuild exactly the sequences encode_preference masked; a long prompt
    keeps its end (the latest turns), like the Encoder's string prompts."""
    from agent_align.env.masking import preference_example

    row = {"prompt": CONV[:4], "chosen": CONV[4:], "rejected": [CONV[6]], "tools": None}
    enc, ex = encode_preference(row, tok), preference_example(row, tok)
    for side in ("chosen", "rejected"):
        assert ex["prompt_ids"] + ex[f"{side}_ids"] == enc[f"{side}_input_ids"]
        assert [0] * len(ex["prompt_ids"]) + ex[f"{side}_mask"] == enc[f"{side}_loss_mask"]
        assert len(ex[f"{side}_mask"]) == len(ex[f"{side}_ids"])
    assert sum(ex["chosen_mask"]) == sum(ex["rejected_mask"])  # the train=false turn adds nothing
    cut = preference_example(row, tok, max_prompt_length=10)
    assert cut["prompt_ids"] == ex["prompt_ids"][-10:] and cut["chosen_mask"] == ex["chosen_mask"]
