"""Typed clients of the job's roles: each owns its role's actor group and hides Ray from the driver.

    RolloutClient  vLLM engines: generate (restart + retry after a resync), weights in, sleep/wake
    LearnerClient  FSDP2 / DeepSpeed ranks: rendezvous, updates (Ray refs), LR schedule, checkpoints
    RewardClient   the rule actor, mixed with a JudgeClient's rankings into per-sample rewards
    JudgeClient    the RRM judge engines (usable without a learner: `rrm-ray judge`, best-of-n)
    Restarts       the recovery they share: wait for Ray's restart, count it, retry the call

`rrm_ray.roles.Roles` starts them for a job. A command that needs only some builds those on their
own placement groups, e.g. best-of-n (`rrm_ray.judge_cli`; a rollout without a learner keeps the
weights it loaded, so it takes no weight-transfer backend):

    groups: list[ActorGroup] = []
    restarts = Restarts.alone(cfg, groups)
    rollout = RolloutClient.start(cfg, model_path, OwnGroups(cfg), None, restarts, takes_weights=False)
    reward = RewardClient.start(cfg, OwnGroups(cfg), restarts, judge=None)    # OwnGroups: rrm_ray.roles
    judge = JudgeClient(JudgePool(cfg), None, restarts)                       # JudgePool: actors.judge
    groups += [rollout.group, reward.group, judge.group]
"""
