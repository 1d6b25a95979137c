"""Rolling out many episodes at once, with seed 003's expert intervention.

Each step, every running episode of a wave gets its action together: one ``agent.act`` call (one
batched ``generate`` for a local model) and one ``expert.act`` call. Who acts is decided per episode:

  null          the agent, always                        (tracker 0 ...)
  ground_truth  the expert, always                       (tracker 1 ...)
  random        the expert with probability epsilon
  informed      the agent for the first init_limit steps; then the expert whenever the last
                |recent_limit| steps all failed (a category other than correct/correct_final)

With a local model agent (``agent.continuous``) the episodes do not wait for each other: each answer is acted on
as soon as it ends, the episode's next prompt joins the decoding batch, and a finished episode's place goes to
the next one (``HFBackend.stream``), where a time step of the batch would wait for its slowest answer.

With ``save_alternate_trace`` both sides propose at every step, and a branching point is recorded when
the expert took over from a different agent action, or the agent acted and its action made no progress
(it failed, or covered no ground-truth step) where the expert's would have.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field

from agent_align.env.config import expert_mode
from agent_align.env.environment import GOOD, OrgEnv, ToolEnv
from agent_align.jsonl import strip_private
from agent_align.validation.extract import extract_call


def makes_progress(outcome: dict) -> bool:
    return outcome["category"] == "correct_final" or (outcome["category"] in GOOD and bool(outcome["covers"]))


def same_action(a: str, b: str, fmt: str) -> bool:
    ca, cb = extract_call(a, fmt)[0], extract_call(b, fmt)[0]
    return a.strip() == b.strip() if ca is None or cb is None else ca == cb


@dataclass
class Episode:
    env: ToolEnv
    sample_id: str
    tracker: list = field(default_factory=list)
    alternates: list = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    start: float = field(default_factory=time.perf_counter)
    expert_turn: bool = False  # who acts at the step being decided


class Intervention:
    def __init__(self, agent_cfg):
        self.mode = expert_mode(agent_cfg)
        self.epsilon = agent_cfg.expert_assist_random_epsilon
        self.init_limit = agent_cfg.expert_assist_init_limit
        self.recent_limit = agent_cfg.expert_assist_recent_limit

    def expert_acts(self, ep: Episode) -> bool:
        if self.mode is None:
            return False
        if self.mode == "ground_truth":
            return True
        if self.mode == "random":
            return ep.rng.random() < self.epsilon
        steps = ep.env.steps
        recent = steps[self.recent_limit:]
        return len(steps) >= self.init_limit and len(recent) == -self.recent_limit and \
            all(s["category"] not in GOOD for s in recent)

    def metadata(self, tracker: list[int]) -> dict:
        return {"mode": self.mode, "init_limit": self.init_limit, "recent_limit": self.recent_limit,
                "random_epsilon": self.epsilon, "tracker": list(tracker)}


class Runner:
    def __init__(self, org: OrgEnv, agent, expert, judge, agent_cfg, fmt: str = "json", seed: int = 0):
        self.org, self.agent, self.expert, self.judge, self.fmt, self.seed = org, agent, expert, judge, fmt, seed
        self.intervention = Intervention(agent_cfg)
        self.save_alt = agent_cfg.save_alternate_trace
        self.batch_size = agent_cfg.batch_size

    def start(self, task: dict, sample_index: int, sample_id: str) -> Episode:
        env = self.org.episode(self.fmt, self.judge)
        env.reset(task, sample_index)
        return Episode(env, sample_id, rng=random.Random(f"{self.seed}-{sample_id}"))

    def run(self, samples: list[tuple[dict, int, str]]):
        """Yields one trajectory record per finished episode: ``agent.batch_size`` episodes at a time, each going on
        as its answer ends (``_stream``), or wave by wave where the agent or expert cannot stream (``_wave``)."""
        if getattr(self.agent, "streams", False) and (self.expert is None or getattr(self.expert, "instant", False)):
            yield from self._stream(samples)
            return
        for i in range(0, len(samples), self.batch_size):
            episodes = [self.start(*s) for s in samples[i:i + self.batch_size]]
            yield from self._wave(episodes)

    def _wave(self, episodes: list[Episode]):
        active = list(episodes)
        while active:
            by_expert = {id(ep): self.intervention.expert_acts(ep) for ep in active}
            asks_agent = [ep for ep in active if not by_expert[id(ep)] or self.save_alt]
            proposals = dict(zip(map(id, asks_agent), self.agent.act([ep.env for ep in asks_agent]))) if asks_agent else {}
            outcomes = {}
            asks_expert = []
            for ep in active:
                outcomes[id(ep)], asks = self._judged(ep, by_expert[id(ep)], proposals.get(id(ep)))
                if asks:
                    asks_expert.append(ep)
            experts = dict(zip(map(id, asks_expert), self.expert.act([ep.env for ep in asks_expert]))) if asks_expert else {}
            for ep in active:
                self._advance(ep, by_expert[id(ep)], proposals.get(id(ep)), experts.get(id(ep)), outcomes.get(id(ep)))
            finished = [ep for ep in active if ep.env.done]
            active = [ep for ep in active if not ep.env.done]
            for ep in finished:
                yield self.record(ep)

    def _stream(self, samples):
        todo, finished = iter(samples), []

        def turn(ep: Episode) -> list:
            """``[(ep, env)]`` when the agent is to propose next (the expert's own steps taken first); when ``ep`` has
            ended, its record is kept and the next episode starts: its first turn, or [] with none left."""
            while True:
                while not ep.env.done:
                    ep.expert_turn = self.intervention.expert_acts(ep)
                    if not ep.expert_turn or self.save_alt:
                        return [(ep, ep.env)]
                    self._advance(ep, True, None, self.expert.act([ep.env])[0], None)
                finished.append(self.record(ep))
                sample = next(todo, None)
                if sample is None:
                    return []
                ep = self.start(*sample)

        first = []
        # turn() may take more from todo: episodes that end before the agent's first turn
        for sample in itertools.islice(todo, self.batch_size):
            first += turn(self.start(*sample))
        proposals, sent = self.agent.stream(first), None
        while True:
            yield from finished
            finished.clear()
            try:
                ep, proposal = proposals.send(sent)
            except StopIteration:
                return
            outcome, asks_expert = self._judged(ep, ep.expert_turn, proposal)
            expert = self.expert.act([ep.env])[0] if asks_expert else None
            self._advance(ep, ep.expert_turn, proposal, expert, outcome)
            sent = turn(ep)

    def _judged(self, ep: Episode, expert_turn: bool, proposal) -> tuple[dict | None, bool]:
        """(the agent's proposal's outcome, when alternates are saved; whether the expert is asked this step): on its
        turn, or when the proposal made no progress (a branching point if the expert would do better)."""
        if expert_turn:
            return None, True
        if self.save_alt and proposal is not None:
            outcome = ep.env.evaluate(proposal)
            return outcome, not makes_progress(outcome)
        return None, False

    def _advance(self, ep: Episode, expert_turn: bool, proposal, expert_action, agent_outcome) -> None:
        env = ep.env
        if (expert_turn and expert_action is None) or (not expert_turn and proposal is None):
            env.truncate("context")  # the prompt no longer fits the model's context
            return
        if self.save_alt and proposal is not None and expert_action is not None and \
                not same_action(proposal, expert_action, self.fmt):
            agent_outcome = agent_outcome or env.evaluate(proposal)
            expert_outcome = env.evaluate(expert_action)
            if makes_progress(expert_outcome) and not makes_progress(agent_outcome):
                ep.alternates.append({"t": len(env.steps), "prompt_messages": len(env.messages),
                                      "taken_by": "expert" if expert_turn else "agent",
                                      "chosen": expert_action, "chosen_category": expert_outcome["category"],
                                      "rejected": proposal, "rejected_category": agent_outcome["category"]})
        action, actor = (expert_action, "expert") if expert_turn else (proposal, "agent")
        ep.tracker.append(1 if expert_turn else 0)
        env.step(action, actor)

    def record(self, ep: Episode) -> dict:
        env, task = ep.env, ep.env.task
        steps = env.steps
        return {
            "sample_id": ep.sample_id, "truncated": env.truncated, "terminated": env.terminated,
            "success": env.success, "total_time_steps": len(steps),
            "expert_assistance": self.intervention.metadata(ep.tracker),
            "task_id": task["task_id"], "sample_index": env.sample_index, "split": task["split"],
            "scenario": task["scenario"], "tool_availability": task["tool_availability"],
            "tool_usage": task["tool_usage"], "question": task["question"], "gold_answer": task["answer"],
            "answerable": task["answerable"], "final_answer": env.final_answer,
            "truncated_reason": env.truncated_reason, "subdomain_mode": self.org.cfg.subdomain_mode,
            "policy_violations": sum(s["category"] == "policy_violation" for s in steps),
            "valid_calls": sum(s["category"] != "invalid_call" for s in steps),
            "reward": round(sum(s["reward"] for s in steps), 4),
            "seconds": round(time.perf_counter() - ep.start, 4),
            "steps": steps, "messages": env.messages, "tools": [t.openai() for t in env.tools],
            "alternate_traces": ep.alternates, "task": strip_private(task),
        }
