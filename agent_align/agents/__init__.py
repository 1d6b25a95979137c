"""Who acts in the environment: agent backends, the expert, and the success judge.

    python -m agent_align stage=agent agent=hf        # local model, batched across episodes
    python -m agent_align stage=agent agent=openai    # OpenAI-compatible HTTP (key from the environment)
    python -m agent_align stage=agent agent=expert    # ground-truth replay (expert trajectories)

Every agent exposes ``act(envs) -> list[str]``: one reply text per episode, computed together.
Entries are lazy so that importing this (config checks) does not import torch.
"""

from agent_align.registry import Registry

BACKENDS: Registry = Registry("agent backend", "agent.backend")
BACKENDS.register("hf", "agent_align.agents.llm:hf_agent")
BACKENDS.register("openai", "agent_align.agents.llm:openai_agent")
BACKENDS.register("random", "agent_align.agents.policies:random_agent")
BACKENDS.register("expert", "agent_align.agents.policies:expert_agent")

EXPERTS = ("ground_truth", "openai", "hf")  # agent.expert: replay, or an LLM that is shown the gold trajectory
JUDGES = ("match", "openai", "hf")  # agent.judge: normalised answer match, or an LLM judge


def build_agent(cfg, ctx):
    return BACKENDS.get(cfg.agent.backend)(cfg, ctx)
