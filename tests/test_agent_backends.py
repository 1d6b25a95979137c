"""Agent backends: the OpenAI-compatible client against a loopback server, the local model batched across episodes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent_align.agents.llm import LLMAgent, LLMExpert, LLMJudge
from agent_align.agents.openai_http import OpenAIBackend
from agent_align.agents.runner import Runner
from agent_align.env.config import OpenAIConfig
from agent_align.env.environment import OrgEnv, match_judge
from agent_align.errors import UserError
from tests.conftest import compose

SECRET = "sk-test-not-a-real-key-1234"


@pytest.fixture
def fake_openai():
    """An OpenAI-compatible server: fails the first request with 503, then answers with the expert-like call it
    finds in the system prompt's reference, or 'yes'; records what it received."""
    state = {"requests": [], "fail_next": 1, "status": 503}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            if state["fail_next"]:
                state["fail_next"] -= 1
                self.send_response(state["status"])
                self.end_headers()
                return
            system = body["messages"][0]["content"]
            if "Reference solution" in system:  # the LLM expert: follow the reference's first call
                reply = system.split("Reference solution (hidden from the user): ")[1].split(" then ")[0]
            elif "Gold answer" in body["messages"][-1]["content"]:
                reply = "yes"
            else:
                reply = '{"tool": "FINAL", "parameters": {"answer": "no idea"}}'
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def backend(state, tmp_path, **kw):
    cfg = OpenAIConfig(base_url=state["url"], model="m", api_key_env="TEST_AGENT_KEY", max_retries=2, concurrency=2)
    return OpenAIBackend(cfg, max_new_tokens=32, temperature=0.0, top_p=1.0, cache_dir=str(tmp_path / "cache"),
                         backoff_s=0.01, **kw)


def test_openai_backend_retries_caches_and_keeps_the_key_out_of_files(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_AGENT_KEY", SECRET)
    cfg = compose(["agent.split=test"])
    b = backend(fake_openai, tmp_path)
    with OrgEnv(cfg.env) as org:
        tasks = [t for t in org.tasks if t["split"] == "test"][:3]
        recs = list(Runner(org, LLMAgent(b), None, match_judge, cfg.agent).run([(t, 0, t["task_id"]) for t in tasks]))
        assert b.requests == 4  # three episodes, one FINAL each, plus the retried 503
        assert all(r["steps"][0]["action"].startswith('{"tool": "FINAL"') for r in recs)
        again = list(Runner(org, LLMAgent(b), None, match_judge, cfg.agent).run([(t, 0, t["task_id"]) for t in tasks]))
    assert b.requests == 4 and [r["final_answer"] for r in again] == ["no idea"] * 3  # served from the disk cache
    first = fake_openai["requests"][-1]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {SECRET}"
    roles = [m["role"] for m in first["body"]["messages"]]
    assert "tool" not in roles and "Tools:" in first["body"]["messages"][0]["content"]
    blobs = json.dumps(recs) + "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "cache").iterdir())
    assert SECRET not in blobs


def test_openai_backend_errors_are_one_line_user_errors(fake_openai, tmp_path):
    fake_openai.update(fail_next=1, status=401)
    with pytest.raises(UserError, match=r"\$TEST_AGENT_KEY") as err:
        backend(fake_openai, tmp_path).complete([{"messages": [{"role": "user", "content": "x"}]}])
    assert "\n" not in str(err.value) and SECRET not in str(err.value)
    fake_openai.update(fail_next=9, status=503)
    with pytest.raises(UserError, match="no answer after 3 attempts"):
        backend(fake_openai, tmp_path).complete([{"messages": [{"role": "user", "content": "y"}]}])


def test_llm_expert_and_llm_judge_through_the_http_backend(fake_openai, tmp_path):
    fake_openai["fail_next"] = 0
    cfg = compose(["agent.split=test", "agent.expert_mode=ground_truth"])
    b = backend(fake_openai, tmp_path)
    with OrgEnv(cfg.env) as org:
        tasks = [t for t in org.tasks if t["split"] == "test" and t["answerable"]][:2]
        env = org.episode()
        env.reset(tasks[0])
        assert json.loads(LLMExpert(b).act([env])[0]) == env.expert_call()
        judge = LLMJudge(b)
        assert judge(tasks[0], "something") == (True, "llm judge said 'yes'")
        unanswerable = next(t for t in org.tasks if not t["answerable"])
        assert judge(unanswerable, "the answer is 4")[0] is False  # rule-based: must say it cannot answer


def tiny_backend(max_new_tokens=4, batch_size=64, streams=False, seed=0, **kw):
    """``HFBackend`` on a one-layer random Llama (fp32, greedy unless ``do_sample``), without a checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from agent_align.agents.llm import HFBackend
    from agent_align.models.templates import chat_template
    from tests.test_env_masking import make_tokenizer

    tok = make_tokenizer(chat_template("builtin"))
    tok.padding_side = "left"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    hf = HFBackend.__new__(HFBackend)
    hf.model, hf.tok, hf.seed, hf.calls, hf.max_prompt, hf.streams = model, tok, 0, 0, 10_000, streams
    hf.kw = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "do_sample": False, "temperature": 1.0,
             "top_p": 1.0, "bf16": False, "stop_at_call": None, **kw}
    return hf


def test_hf_backend_advances_all_episodes_with_one_generate_call_per_step(monkeypatch):
    import agent_align.generation as generation

    calls = []
    real = generation.generate_ids
    monkeypatch.setattr(generation, "generate_ids", lambda m, t, ids, **kw: calls.append(len(ids)) or real(m, t, ids, **kw))
    hf = tiny_backend()
    cfg = compose(["agent.split=test", "env.horizon=3"])
    with OrgEnv(cfg.env) as org:
        tasks = [t for t in org.tasks if t["split"] == "test"][:5]
        recs = list(Runner(org, LLMAgent(hf), None, match_judge, cfg.agent).run([(t, 0, t["task_id"]) for t in tasks]))
        assert calls == [5, 5, 5] and all(r["total_time_steps"] == 3 for r in recs)
        hf.max_prompt = 5  # nothing fits any more: episodes end as truncated by context, not as invalid calls
        recs = list(Runner(org, LLMAgent(hf), None, match_judge, cfg.agent).run([(t, 0, t["task_id"]) for t in tasks]))
    assert all(r["truncated"] and r["truncated_reason"] == "context" and r["total_time_steps"] == 0 for r in recs)


def _episodes(overrides, backend, n, expert=None):
    cfg = compose(["agent.split=test", *overrides])
    with OrgEnv(cfg.env) as org:
        tasks = [t for t in org.tasks if t["split"] == "test"][:n]
        runner = Runner(org, LLMAgent(backend), expert, match_judge, cfg.agent)
        recs = list(runner.run([(t, 0, t["task_id"]) for t in tasks]))
    for r in recs:
        r.pop("seconds")
    return sorted(recs, key=lambda r: r["sample_id"])


@pytest.mark.parametrize("overrides,batch", [
    ([], 64),  # every episode in the first batch
    ([], 3),  # finished episodes' places go to the next ones
    (["agent.expert_mode=informed", "agent.expert_assist_init_limit=1", "agent.save_alternate_trace=true"], 4),
    (["agent.expert_mode=random", "agent.expert_assist_random_epsilon=0.5"], 5),
])
def test_streamed_episodes_are_the_episodes_stepped_in_waves(monkeypatch, overrides, batch):
    """Greedy fp32: each episode's turns, expert steps, branching points and outcome are the same whether it goes on
    as its answer ends (one ``generate_stream`` call for the run) or waits for its time step's slowest answer."""
    from agent_align.agents.policies import GroundTruthExpert
    import agent_align.generation as generation

    calls = {"stream": 0, "ids": 0}
    real_stream, real_ids = generation.generate_stream, generation.generate_ids

    def counted(name, real):
        return lambda *a, **kw: calls.__setitem__(name, calls[name] + 1) or real(*a, **kw)
    monkeypatch.setattr(generation, "generate_stream", counted("stream", real_stream))
    monkeypatch.setattr(generation, "generate_ids", counted("ids", real_ids))
    overrides = ["env.horizon=4", *overrides]
    expert = GroundTruthExpert() if any("expert_mode" in o for o in overrides) else None
    waves = _episodes(overrides, tiny_backend(max_new_tokens=6, batch_size=batch), 9, expert)
    assert calls["stream"] == 0 and calls["ids"] > 0
    calls["ids"] = 0
    streamed = _episodes([*overrides, f"agent.batch_size={batch}"], tiny_backend(max_new_tokens=6, batch_size=batch,
                                                                                 streams=True), 9, expert)
    assert calls == {"stream": 1, "ids": 0}
    assert len(streamed) == 9 and streamed == waves
    assert any(r["total_time_steps"] > 1 for r in streamed)
    if "agent.save_alternate_trace=true" in overrides:
        assert any(r["alternate_traces"] for r in streamed)


def test_streamed_episodes_end_on_context_and_on_calls_as_in_waves():
    """Chats that outgrow the context end their episodes as truncated without reaching the decoder, at the first
    turn or later, while the others go on; answers end at the call (``stop_at_call``) as in waves."""
    def run(streams, max_prompt):
        hf = tiny_backend(max_new_tokens=8, batch_size=4, streams=streams, stop_at_call="json")
        hf.max_prompt = max_prompt
        return _episodes(["env.horizon=4"], hf, 6)

    for max_prompt in (5, 300, 450, 10_000):  # first prompts are 274-310 tokens, each turn adds ~100
        streamed = run(True, max_prompt)
        assert streamed == run(False, max_prompt)
        steps = sorted(r["total_time_steps"] for r in streamed)
        truncated = [r["truncated_reason"] == "context" for r in streamed]
        assert {5: all(truncated) and steps == [0] * 6, 300: 0 in steps and 1 in steps, 450: any(truncated) and
                max(steps) < 4, 10_000: not any(truncated)}[max_prompt]


def test_sampled_streamed_episodes_repeat_with_their_seed():
    """Sampling through the stream: every episode ends, the same seed gives the same episodes, another seed others."""
    def run(seed):
        hf = tiny_backend(max_new_tokens=6, batch_size=4, streams=True, do_sample=True)
        hf.seed = seed
        return _episodes(["env.horizon=3"], hf, 9)

    first = run(0)
    assert len(first) == 9 and all(r["total_time_steps"] >= 1 for r in first)
    assert run(0) == first
    assert run(1) != first
