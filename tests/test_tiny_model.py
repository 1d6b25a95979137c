"""The embedded model's build: the words pre-tokeniser, the previous-token prior, the copy warm-up,
and the chat template's tool placement."""

from __future__ import annotations

import torch

from agent_align.models.copy_prior import install_previous_token_heads, warm_up_copying
from agent_align.models.tiny import CHAT_TEMPLATE, train_tokenizer

CORPUS = ["Book a hotel in 'Paris' for 3 nights.\nTools:\nbook_hotel(city: string, nights: integer)",
          '{"tool": "book_hotel", "parameters": {"city": "Paris", "nights": 3}}',
          "Find the hotel and book it. The hotel is in Oslo; book_hotel books it."] * 20


def _tokens(tok, text):
    return [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]


def test_words_pretokenizer_tokenises_a_word_the_same_everywhere():
    tok = train_tokenizer(CORPUS, 300, "words")
    in_request = _tokens(tok, "Book a hotel in 'Paris'")
    in_name = _tokens(tok, "book_hotel(city: string)")
    in_call = _tokens(tok, '{"tool": "book_hotel"')
    assert "hotel" in in_request and "hotel" in in_name and "hotel" in in_call
    assert _tokens(tok, "742") == ["7", "4", "2"]  # numbers are copied digit by digit
    gpt2 = train_tokenizer(CORPUS, 300, "bytelevel")
    assert " hotel" in _tokens(gpt2, "Book a hotel") and "hotel" not in _tokens(gpt2, "Book a hotel")


def _llama(heads=4, bias=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=heads,
                      num_key_value_heads=heads, intermediate_size=128, attention_bias=bias, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_previous_token_heads_attend_one_and_two_back_whatever_the_tokens():
    model = _llama()
    install_previous_token_heads(model, heads=(0, 1), offsets=(1, 2))
    x = torch.randint(10, 300, (4, 120))
    att = model(input_ids=x, output_attentions=True).attentions[0]  # (batch, heads, query, key)
    t = torch.arange(2, 120)
    assert att[:, 0, t, t - 1].mean() > 0.9
    assert att[:, 1, t, t - 2].mean() > 0.9
    assert att[:, 2, t, t - 1].mean() < 0.5  # the other heads are left alone


def test_previous_token_heads_need_attention_biases():
    import pytest

    with pytest.raises(ValueError, match="attention_bias"):
        install_previous_token_heads(_llama(bias=False))


def test_copy_warm_up_stops_when_learned_and_reports_what_happened():
    model = _llama()
    install_previous_token_heads(model, heads=(0, 1), offsets=(1, 2))
    result = warm_up_copying(model, (10, 300), max_steps=3, batch=4)
    assert result["steps"] == 3 and not result["learned"] and 0.0 <= result["accuracy"] <= 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    warm_up_copying(model, (10, 300), max_steps=2, batch=4)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tools_follow_the_first_user_message_and_the_template_is_prefix_stable():
    from transformers.utils.chat_template_utils import _compile_jinja_template

    tmpl = _compile_jinja_template(CHAT_TEMPLATE)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}]
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "A"}, {"role": "tool", "content": "obs"}, {"role": "user", "content": "more"}]
    full = tmpl.render(messages=msgs, tools=tools, bos_token="", add_generation_prompt=False)
    assert full.index("Weather in Oslo?") < full.index("get_weather(city: string, days?: integer)") < full.index("obs")
    assert full.count("Tools:") == 1
    for i in range(2, len(msgs)):
        assert full.startswith(tmpl.render(messages=msgs[:i], tools=tools, bos_token="", add_generation_prompt=False))
    only_system = tmpl.render(messages=msgs[:1], tools=tools, bos_token="", add_generation_prompt=True)
    assert "get_weather" in only_system and only_system.endswith("<|assistant|>")
