"""The agentic environment: a synthetic organisation (SQLite database + FTS5 document index), its tools
in three subdomain modes, multi-hop tasks with ground truth, and the gym-style episode.

    from agent_align.env.environment import OrgEnv
    with OrgEnv(cfg.env) as org:
        env = org.episode()
        env.reset(org.tasks[0])

See docs/agent_env.md. Submodules are imported where used, so config checks stay light.
"""
