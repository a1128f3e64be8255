"""Typed clients of the job's roles: the only code that holds Ray handles, waits on Ray refs or sees
Ray's exceptions (a dead actor reaches the jobs as `group.ActorDied`, a hang as `RemoteCallTimeout`).

    RolloutClient  vLLM engines: generate (restart + retry after a resync), weights in, sleep/wake
    LearnerClient  FSDP2 / DeepSpeed ranks: rendezvous, updates, LR schedule, checkpoints
    RewardClient   the rule actor, mixed with the JudgeClient's rankings into per-sample rewards
    JudgeClient    the RRM judge engines (usable without a learner: `rrm-ray judge`, best-of-n)
    Restarts       the recovery they share: wait for Ray's restart, count it, retry the call
    Roles          a job's placement groups and its clients, started in order (`roles.py`)

A command that needs only some roles starts those on their own placement groups (`roles.OwnGroups`),
e.g. best-of-n (`rrm_ray.jobs.judging`; a rollout without a learner keeps the weights it loaded, so it
takes no weight-transfer backend).
"""
