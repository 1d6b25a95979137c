"""Language-model backends (local Hugging Face model, OpenAI-compatible HTTP) and the three roles they
play: the agent, the LLM expert (shown the ground-truth trajectory), and the LLM judge.

A backend has ``complete(chats) -> list[str | None]`` for chats ``{"messages", "tools"}``; ``None``
means the chat no longer fits the model's context (the episode is then truncated). A backend with ``streams``
true also has ``stream``: a generator of ``(key, text or None)`` as each answer ends, sent the next chats.
"""

from __future__ import annotations

import json
import logging

from agent_align.env.environment import is_cannot_answer, match_judge

log = logging.getLogger(__name__)


class HFBackend:
    """A local causal LM: ``complete`` decodes a list of chats in one batched call (a wave's time step), ``stream``
    decodes chats as they come, each new one joining the batch as a row ends (``generate_stream``)."""

    def __init__(self, cfg, model_path: str | None, *, temperature: float, max_new_tokens: int, seed: int = 0):
        from agent_align.generation import call_stop, inference_copy, streams
        from agent_align.hardware import resolve_precision
        from agent_align.models import load_model_and_tokenizer

        model, self.tok = load_model_and_tokenizer(cfg, path=model_path)
        bf16 = resolve_precision(cfg.hardware) == "bf16"
        # the decoding copy made once (bf16 on a bf16 CPU), not at every step: generate_ids copies an fp32 model per
        # call (0.4-0.8 s for SmolLM2-135M here), and the runner calls it once a time step of the episode batch
        self.model = inference_copy(model, bf16)
        a = cfg.agent
        self.max_new_tokens = max_new_tokens
        self.max_prompt = cfg.model.max_length - max_new_tokens
        self.kw = dict(max_new_tokens=max_new_tokens, batch_size=a.batch_size, do_sample=temperature > 0,
                       temperature=temperature or 1.0, top_p=a.top_p, bf16=bf16, stop_at_call=call_stop(cfg))
        self.seed, self.calls = seed, 0
        self.streams = a.continuous and streams(self.model, temperature > 0)

    def _fitting(self, chats):
        """A generator: yields ``(key, None)`` for each ``(key, chat)`` too long for the context (taking back the chats
        that follow from it), returns ``(key, prompt ids)`` for the others."""
        from agent_align.generation import encode_prompts

        fit, todo = [], list(chats)
        while todo:
            key, chat = todo.pop(0)
            ids = encode_prompts(self.tok, [chat])[0]
            if len(ids) <= self.max_prompt:
                fit.append((key, ids))
            else:
                todo += (yield key, None) or []
        return fit

    def stream(self, chats):
        """A generator over answers as they end: ``(key, text or None)`` for each ``(key, chat)`` of ``chats`` and of
        every list sent back (``generate_stream``); None: the chat does not fit the context."""
        from agent_align.generation import generate_stream

        first = yield from self._fitting(chats)
        if not first:
            return
        self.calls += 1
        answers = generate_stream(self.model, self.tok, first, seed=self.seed + self.calls, **self.kw)
        sent = None
        while True:
            try:
                key, ids = answers.send(sent)
            except StopIteration:
                return
            more = (yield key, self.tok.decode(ids, skip_special_tokens=True)) or []
            sent = yield from self._fitting(more)

    def complete(self, chats: list[dict]) -> list[str | None]:
        from agent_align.generation import encode_prompts, generate_ids

        ids = encode_prompts(self.tok, chats)
        fits = [i for i, x in enumerate(ids) if len(x) <= self.max_prompt]
        out: list[str | None] = [None] * len(chats)
        if fits:
            self.calls += 1  # a new seed per call: sampled episodes don't repeat each other's draws
            gen = generate_ids(self.model, self.tok, [ids[i] for i in fits], desc=None, seed=self.seed + self.calls,
                               **self.kw)
            for i, seqs in zip(fits, gen):
                out[i] = self.tok.decode(seqs[0], skip_special_tokens=True)
        return out


def make_backend(kind: str, cfg, ctx, model_path: str | None = None, temperature: float | None = None):
    """``hf`` models are shared through ``ctx.cache`` when two roles use the same checkpoint."""
    a = cfg.agent
    temperature = a.temperature if temperature is None else temperature
    if kind == "hf":
        key = ("agent_hf", model_path, temperature)
        if key not in ctx.cache:
            ctx.cache[key] = HFBackend(cfg, model_path, temperature=temperature, max_new_tokens=a.max_new_tokens,
                                       seed=cfg.seed)
        return ctx.cache[key]
    if kind == "openai":
        from agent_align.agents.openai_http import OpenAIBackend
        from agent_align.models.tiny import cache_root

        cache_dir = a.openai.cache_dir or str(cache_root() / "llm")
        return OpenAIBackend(a.openai, max_new_tokens=a.max_new_tokens, temperature=temperature, top_p=a.top_p,
                             cache_dir=cache_dir)
    raise ValueError(f"no LLM backend {kind!r}")


class LLMAgent:
    def __init__(self, backend, tag: str | None = None, placement: str = "prefix"):
        self.backend, self.tag, self.placement = backend, tag, placement

    def chat(self, env) -> dict:
        chat = {**env.chat(), "seed": env.sample_index}
        if self.tag:  # agent.prompt_tag: e.g. the NAT positive tag on the task's user message
            from agent_align.steps.nat import tag_prompt

            chat["messages"] = tag_prompt(chat["messages"], self.tag, self.placement)
        return chat

    def act(self, envs) -> list[str | None]:
        return self.backend.complete([self.chat(env) for env in envs])

    @property
    def streams(self) -> bool:
        return getattr(self.backend, "streams", False)

    def stream(self, turns):
        """A generator over proposals as they end: ``(key, text or None)`` for each ``(key, env)`` of ``turns`` and
        of every list sent back, which are decoded alongside (``HFBackend.stream``)."""
        answers, sent = self.backend.stream([(key, self.chat(env)) for key, env in turns]), None
        while True:
            try:
                key, text = answers.send(sent)
            except StopIteration:
                return
            sent = [(k, self.chat(env)) for k, env in (yield key, text) or []]


def hf_agent(cfg, ctx):
    return LLMAgent(make_backend("hf", cfg, ctx, cfg.agent.model_path), cfg.agent.prompt_tag, cfg.nat.placement)


def openai_agent(cfg, ctx):
    return LLMAgent(make_backend("openai", cfg, ctx), cfg.agent.prompt_tag, cfg.nat.placement)


def _reference(env) -> str:
    # {endpoint} as "selected": in selection mode the reference shows the filled call_endpoint of each step
    steps = [json.dumps(env.toolset.concrete(s, {s.get("endpoint")}), ensure_ascii=False)
             for s in env.task["trajectory"]]
    return ("Reference solution (hidden from the user): " + " then ".join(steps) +
            ". Continue from the current state with the single next call.")


class LLMExpert(LLMAgent):
    """Seed 003's LLM expert: the model sees the gold trajectory and answer and produces the next call."""

    def chat(self, env) -> dict:
        chat = super().chat(env)
        chat["messages"][0]["content"] += "\n" + _reference(env)
        return chat


class LLMJudge:
    """Answer matching by a model: 'yes'/'no' on (question, gold, candidate). Tasks the tools cannot
    answer keep the rule-based check: the reply must say it cannot answer."""

    PROMPT = ("Question: {q}\nGold answer: {gold}\nCandidate answer: {pred}\n"
              "Does the candidate give the gold answer? Reply with one word: yes or no.")

    def __init__(self, backend):
        self.backend = backend

    def __call__(self, task: dict, answer: str) -> tuple[bool, str]:
        if not task["answerable"] or is_cannot_answer(answer):
            return match_judge(task, answer)
        chat = {"messages": [{"role": "user", "content": self.PROMPT.format(q=task["question"], gold=task["answer"],
                                                                            pred=answer)}], "tools": []}
        reply = (self.backend.complete([chat])[0] or "").strip().lower()
        return reply.startswith("yes"), f"llm judge said {reply[:40]!r}"


def build_expert(cfg, ctx):
    from agent_align.agents.policies import GroundTruthExpert

    a = cfg.agent
    if a.expert == "ground_truth":
        return GroundTruthExpert()
    return LLMExpert(make_backend(a.expert, cfg, ctx, a.expert_model_path, temperature=0.0))


def build_judge(cfg, ctx):
    a = cfg.agent
    if a.judge == "match":
        return match_judge
    return LLMJudge(make_backend(a.judge, cfg, ctx, a.judge_model_path, temperature=0.0))
