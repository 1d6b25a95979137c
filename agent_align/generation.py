"""Batched generation with KV cache and left padding: one ``generate`` call advances many prompts.

    outputs = generate(model, tokenizer, [{"messages": [...], "tools": [...]}, ...], max_new_tokens=96)

Prompts are sorted by length so each batch pads little, and a batch stops as soon as every
sequence in it has emitted EOS.
"""

from __future__ import annotations

from typing import Sequence

from tqdm import tqdm


def prompt_text(tokenizer, chat: dict) -> str:
    return tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools") or None,
                                         add_generation_prompt=True, tokenize=False)


def encode_prompts(tokenizer, chats: Sequence[dict]) -> list[list[int]]:
    texts = [prompt_text(tokenizer, c) for c in chats]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def inference_copy(model, bf16: bool):
    """The model to decode with. On a CPU where bf16 is fast: a bf16 copy (the training weights stay fp32).

    Decoding always uses a static KV cache (``generate_ids``): the dynamic cache concatenates every
    layer's keys and values at each new token, which was 77% of batched decoding time in fp32 here
    (benchmarks/README.md), and CPU bf16 kernels (oneDNN) are built per tensor shape, so a growing
    cache also made autocast decoding slower than fp32.
    """
    import copy

    import torch

    if not bf16 or model.device.type != "cpu" or model.dtype != torch.float32:
        return model
    fast = copy.deepcopy(model).to(torch.bfloat16)
    for module in fast.modules():  # drop trainer-installed forward wrappers (fp32 upcast, autocast, fused head)
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_original_forward", None)
    return fast


def generate_ids(model, tokenizer, prompt_ids: Sequence[list[int]], *, max_new_tokens: int = 96, batch_size: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
                 bf16: bool = False, desc: str | None = "generating", seed: int | None = None,
                 cache_implementation: str | None = None) -> list[list[list[int]]]:
    """New token ids per prompt (a list of ``num_return_sequences`` sequences each), in input order.
    ``cache_implementation``: "static" (default, see ``inference_copy``) or None for transformers' dynamic cache."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list = [None] * len(prompt_ids)
    was_training = model.training
    model.eval()
    decoder = inference_copy(model, bf16)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
                      eos_token_id=tokenizer.eos_token_id, num_return_sequences=num_return_sequences, use_cache=True,
                      cache_implementation=cache_implementation)
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    bar = tqdm(total=len(order), desc=desc, unit="prompt", disable=desc is None or None, mininterval=1.0)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            longest = max(len(prompt_ids[i]) for i in idx)
            ids = torch.full((len(idx), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), longest), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: generation continues right after each prompt
                seq = prompt_ids[i]
                ids[row, longest - len(seq):] = torch.tensor(seq)
                mask[row, longest - len(seq):] = 1
            with torch.inference_mode():
                gen = decoder.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **gen_kwargs)
            new = gen[:, longest:].tolist()
            for row, i in enumerate(idx):
                seqs = new[row * num_return_sequences:(row + 1) * num_return_sequences]
                out[i] = [_strip(s, pad, tokenizer.eos_token_id) for s in seqs]
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return out


def _strip(seq: list[int], pad: int, eos: int) -> list[int]:
    if eos in seq:
        seq = seq[:seq.index(eos)]
    while seq and seq[-1] == pad:
        seq.pop()
    return seq


def generate(model, tokenizer, chats: Sequence[dict], *, max_new_tokens: int = 96, batch_size: int = 64,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             bf16: bool = False, desc: str | None = "generating", seed: int | None = None):
    """Decoded completions: one string per chat, or a list of ``num_return_sequences`` strings."""
    ids = generate_ids(model, tokenizer, encode_prompts(tokenizer, chats), max_new_tokens=max_new_tokens,
                       batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
                       num_return_sequences=num_return_sequences, bf16=bf16, desc=desc, seed=seed)
    texts = [[tokenizer.decode(s, skip_special_tokens=True) for s in seqs] for seqs in ids]
    return [t[0] for t in texts] if num_return_sequences == 1 else texts
