"""Stage registry: ``stage=NAME`` -> a module's ``run(cfg, ctx) -> dict``.

Adding a stage is one line here. Entries are lazy "module:function" strings so that light stages
(generate, score) do not pay torch's import time.
"""

from agent_align.registry import Registry

STAGES: Registry = Registry("stage", "stage")
STAGES.register("generate", "agent_align.stages.generate:run")
STAGES.register("validate_data", "agent_align.stages.validate_data:run")
STAGES.register("score", "agent_align.stages.score:run")
STAGES.register("sft", "agent_align.stages.sft:run")
STAGES.register("evaluate", "agent_align.stages.evaluate:run")
STAGES.register("dpo", "agent_align.stages.dpo:run")
STAGES.register("pipeline", "agent_align.stages.pipeline:run")
STAGES.register("infer", "agent_align.stages.infer:run")
STAGES.register("compare", "agent_align.stages.compare:run")
STAGES.register("agent", "agent_align.stages.agent:run")
STAGES.register("agent_pipeline", "agent_align.agents.pipeline:run")
STAGES.register("score_steps", "agent_align.stages.score_steps:run")
STAGES.register("sample", "agent_align.stages.sample:run")
STAGES.register("reward_eval", "agent_align.stages.reward_eval:run")
STAGES.register("analyze", "agent_align.stages.analyze:run")
STAGES.register("trajectories", "agent_align.stages.trajectories:run")
