"""Decision tokens (`dpo.decision_tokens`, `dpo.decision_sides`): DPO trains the tokens both sides share and N
tokens from where they part, on agent and single-call pairs; the defaults follow the loss; a step anchor trains
only through the NLL term. The masks themselves and the trainer helpers: tests/test_dpo_masking.py."""

from __future__ import annotations

import copy

import pytest

from agent_align.errors import UserError
from agent_align.stages.context import RunContext
from tests.conftest import MICRO, compose
from tests.test_dpo_masking import FINAL, call, make_trainer, obs, row


def test_decision_tokens_train_only_up_to_where_the_sides_part(tmp_path, tiny):
    """dpo.decision_tokens=N: the tokens both calls share (they cancel in the margin) and N tokens from where
    they part; the arguments' JSON after that, written alike by both sides, is not trained."""
    from agent_align.train.dpo import decision_masks, masked_preference_dataset

    tok = tiny[2]
    rows = [row([call("Mei Sato")], [call("Sato")]), row([FINAL], [call("Mei Sato")])]
    full = masked_preference_dataset(rows, tok, max_length=512, max_prompt_length=400)
    one = masked_preference_dataset(rows, tok, max_length=512, max_prompt_length=400, decision_tokens=1)
    for ex, cut in zip(full, one):
        c, r = ex["chosen_ids"], ex["rejected_ids"]
        k = next(i for i in range(min(len(c), len(r))) if c[i] != r[i])
        for side in ("chosen", "rejected"):
            kept = [i for i, m in enumerate(cut[f"{side}_mask"]) if m]
            assert kept == [i for i, m in enumerate(ex[f"{side}_mask"]) if m and i <= k]
            assert sum(cut[f"{side}_mask"]) < sum(ex[f"{side}_mask"])
    # the first pair's calls part inside the name's value: what is trained ends there, on both sides
    def trained(side):
        return tok.decode([t for t, m in zip(one[0][f"{side}_ids"], one[0][f"{side}_mask"]) if m])

    assert trained("chosen").endswith('"name": "M') and trained("rejected").endswith('"name": "S')
    # decision_sides=rejected: the chosen side keeps every assistant token (and rpo's NLL on it)
    rej = decision_masks(full[0], 1, "rejected")
    assert rej["chosen_mask"] == full[0]["chosen_mask"] and rej["rejected_mask"] == one[0]["rejected_mask"]
    with pytest.raises(ValueError, match="sides"):
        decision_masks(full[0], 1, "chosen")
    # more tokens than either side has: every assistant token, as without the option
    assert decision_masks(full[1], 10_000)["chosen_mask"] == full[1]["chosen_mask"]
    # TRL's collator trains exactly what the masks keep
    trainer = make_trainer(tmp_path, tiny, rows[:1])
    trainer.train_dataset = one.select([0])
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["completion_mask"].sum(dim=1).tolist() == [sum(one[0]["chosen_mask"]), sum(one[0]["rejected_mask"])]


def test_decision_tokens_on_single_call_pairs(tmp_path, tiny):
    """Single-call pairs take dpo.decision_tokens too: the default run's on-policy DPO pushed the rejected
    samples' closing braces down after their error and the aligned model wrote `}}}}` (json_error 11 -> 42)."""
    from agent_align.stages.dpo import check_pair_rows, to_dataset
    from agent_align.train.encode import Encoder

    tok = tiny[2]
    chosen = '{"tool": "update_user", "parameters": {"user_id": 92, "changes": {"name": "Chen Wei"}}}'
    rejected = '{"tool": "update_user", "parameters": {"user_id": 92, "changes": {"name": "Wei"}}}'
    pairs = [{"prompt": "Rename user 92 to Chen Wei.", "chosen": chosen, "rejected": rejected, "schema": {}, "_line": 1}]
    cfg = compose([*MICRO, "dpo.decision_tokens=1", "dpo.decision_sides=both"])
    check_pair_rows(cfg, pairs, tmp_path / "pairs.jsonl")  # no longer refused
    enc = Encoder(tok, 512, 400)
    full = to_dataset(compose([*MICRO, "dpo.decision_tokens=0"]), RunContext(tmp_path / "full"), enc, pairs, 0)[0]
    one = to_dataset(cfg, RunContext(tmp_path / "one"), enc, pairs, 0)[0]
    assert one["chosen_ids"] == full["chosen_ids"] and "chosen_mask" not in full
    c, r = one["chosen_ids"], one["rejected_ids"]
    k = next(i for i in range(min(len(c), len(r))) if c[i] != r[i])
    for side, ids in (("chosen", c), ("rejected", r)):
        assert one[f"{side}_mask"] == [1] * (k + 1) + [0] * (len(ids) - k - 1)
    # what each side trains ends at the token where the names part, before the braces both write
    assert tok.decode(r[:k + 1]).endswith('"name": "W') and not tok.decode(c[:k + 1]).endswith("}")
    # and the trainer scores exactly those tokens (MaskedPreferenceCollator, picked by the mask columns)
    from trl import DPOConfig

    from agent_align.train.dpo import PretokenizedDPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, max_length=512,
                     precompute_ref_log_probs=False, report_to=[], use_cpu=True, save_strategy="no", bf16=False)
    ds = to_dataset(cfg, RunContext(tmp_path / "one"), enc, pairs, 0)
    trainer = PretokenizedDPOTrainer(copy.deepcopy(tiny[1]), args=args, train_dataset=ds, processing_class=tok)
    assert trainer.data_collator([ds[0]])["completion_mask"].sum(dim=1).tolist() == [k + 1, k + 1]
    rej = to_dataset(compose([*MICRO, "dpo.decision_tokens=1", "dpo.decision_sides=rejected"]),
                     RunContext(tmp_path / "rej"), enc, pairs, 0)[0]
    assert rej["chosen_mask"] == [1] * len(c) and rej["rejected_mask"] == one["rejected_mask"]


def test_decision_token_defaults_follow_the_loss():
    """The default run masks the rejected side's decision tokens (measured, conf/config.yaml); the step losses,
    which weigh whole turns, default to every token; an explicit value wins; the agentic experiment keeps both sides."""
    from agent_align.checks import check_config

    got = {o: (c.dpo.decision_tokens, c.dpo.decision_sides) for o in ("", "loss=dpo", "loss=ipo", "loss=rpo",
                                                                       "loss=stepwise", "loss=step_dpo")
           for c in [compose([o] if o else [])]}
    assert got == {"": (1, "rejected"), "loss=dpo": (1, "rejected"), "loss=ipo": (1, "rejected"),
                   "loss=rpo": (1, "rejected"), "loss=stepwise": (0, "rejected"), "loss=step_dpo": (0, "rejected")}
    for loss in ("stepwise", "step_dpo"):
        check_config(compose([f"loss={loss}", "data.negatives_source=synthetic"]))  # the default does not trip the check
    assert compose(["dpo.decision_tokens=3"]).dpo.decision_tokens == 3
    assert compose(["loss=dpo", "dpo.decision_tokens=0"]).dpo.decision_tokens == 0
    agentic = compose(["+experiment=agentic_sft_dpo"]).dpo
    assert (agentic.decision_tokens, agentic.decision_sides) == (1, "both")
    assert compose(["+experiment=from_scratch"]).dpo.decision_tokens == 0


def test_decision_tokens_fail_at_start_where_they_would_do_nothing(tmp_path):
    from agent_align.checks import check_config
    from agent_align.stages.dpo import check_pair_rows

    agent = [{**row([call("Mei Sato"), obs("ok"), FINAL], [call("Sato"), obs("ERROR")]), "_line": 1,
              "chosen_scores": [1, 1], "rejected_scores": [0]}]
    with pytest.raises(UserError, match=r"'dpo.decision_tokens' = 2: loss=stepwise"):  # whatever the stage
        check_config(compose(["dpo.decision_tokens=2", "loss=stepwise", "data.negatives_source=synthetic"]))
    check_pair_rows(compose(["dpo.decision_tokens=2", "data.negatives_source=synthetic"]), agent, tmp_path / "p.jsonl")


@pytest.mark.parametrize("shared", [False, True])
def test_a_step_anchor_trains_only_through_the_nll_term(tmp_path, tiny, shared):
    """agent.step_anchors: a pair whose two sides are the same turn has a DPO margin of exactly 0 and no DPO
    gradient (same tokens, same mask, same context, with the prompt shared or not); loss=rpo's NLL term trains it."""
    import math

    anchor = row([call("Mei Sato")], [call("Mei Sato")])
    norms = {}
    for loss_type in (("sigmoid",), ("sigmoid", "sft")):
        trainer = make_trainer(tmp_path / "-".join(loss_type), tiny, [anchor, anchor], loss_type=loss_type,
                               shared=shared, ref=True)
        batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        norms[loss_type] = math.sqrt(sum(float((p.grad ** 2).sum()) for p in trainer.model.parameters()
                                         if p.grad is not None))
        if loss_type == ("sigmoid",):
            assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert norms[("sigmoid", "sft")] > 0.1 and norms[("sigmoid",)] < 1e-6 * norms[("sigmoid", "sft")]
