"""A job without `cluster.address` starts its own Ray: on cpu with logical resources, on cuda with the
GPUs Ray detects (issue 23, item 3: `rrm-ray train configs/grpo_gpu_1x8.yaml` used to declare 0 GPUs
and could never place)."""

from pathlib import Path

import pytest

from rrm_ray.config import ConfigError
from rrm_ray.memory import build_report
from rrm_ray.placement import declared_nodes, local_resources
from rrm_ray.validation import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_cpu_declares_logical_cpus_and_no_gpus():
    cfg = load_config(CONFIGS / "quickstart.yaml")
    assert local_resources(cfg.cluster) == (8, 0)
    assert declared_nodes(cfg) == [{"CPU": 8.0}]


def test_cuda_leaves_the_count_to_ray():
    """None is ray.init's own "detect this machine's resources" (ray.init(num_gpus=None))."""
    cfg = load_config(CONFIGS / "grpo_gpu_1x8.yaml")
    assert cfg.cluster.address is None
    assert local_resources(cfg.cluster) == (None, None)
    # the shape checked before start is the declared one: num_nodes x gpus_per_node
    assert declared_nodes(cfg) == [{"GPU": 8.0}]
    text, problems = build_report(cfg, declared_nodes(cfg), "here")
    assert not problems
    assert "local Ray with the GPUs it detects" in text


def test_cuda_with_stated_gpus_is_checked_against_the_job():
    cfg = load_config(CONFIGS / "grpo_gpu_1x8.yaml", ["cluster.local_num_gpus=8"])
    assert local_resources(cfg.cluster) == (None, 8)
    assert declared_nodes(cfg) == [{"GPU": 8.0}]
    with pytest.raises(ConfigError, match=r"cluster.local_num_gpus: the job asks for 8 GPUs .* declares 2"):
        load_config(CONFIGS / "grpo_gpu_1x8.yaml", ["cluster.local_num_gpus=2"])


def test_cpu_count_still_checked_where_stated():
    with pytest.raises(ConfigError, match=r"cluster\.local_num_cpus: the job asks for"):
        load_config(CONFIGS / "quickstart.yaml", ["cluster.local_num_cpus=1"])
