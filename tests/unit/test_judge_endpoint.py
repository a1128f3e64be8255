"""A judge behind an endpoint, without a server: a dead URL is retried, counted and reported by name,
the key is read from the variable the config names (and never shows up in an error), and the job
reserves no judge bundles (`rrm-ray plan` says where the judge is)."""

from __future__ import annotations

import socket

import pytest

from rrm_ray.clients.judge_endpoint import (
    Completions,
    EndpointJudgeClient,
    JudgeEndpointError,
    api_key,
    endpoint_urls,
)
from rrm_ray.config import JudgeEndpointConfig
from rrm_ray.memory import build_report
from rrm_ray.placement import declared_nodes, placement_layout
from rrm_ray.validation import load_config

PLANTED = "planted-key-value-7f3a"


def _dead_url() -> str:
    """A URL on this machine where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_dead_endpoint_is_retried_counted_and_named(monkeypatch):
    monkeypatch.setenv("RRM_TEST_JUDGE_KEY", PLANTED)
    url = _dead_url()
    cfg = load_config(
        "configs/judge_cpu.yaml",
        [
            f"judge.endpoint.url={url}",
            "judge.endpoint.retries=1",
            "judge.endpoint.api_key_env=RRM_TEST_JUDGE_KEY",
        ],
    )
    with pytest.raises(JudgeEndpointError) as err:
        EndpointJudgeClient.start(cfg)
    message = str(err.value)
    assert url in message and "failed 2 times" in message and "judge.endpoint.retries=1" in message
    assert "ConnectError" in message and PLANTED not in message
    http = Completions(url, cfg.judge.endpoint, PLANTED)
    with pytest.raises(JudgeEndpointError):
        http.request("POST", "/v1/completions", {"prompt": [1, 2]})
    assert http.errors == 2  # the first try and one retry
    http.close()


def test_the_key_comes_from_the_variable_the_config_names(monkeypatch):
    monkeypatch.delenv("RRM_TEST_UNSET_KEY", raising=False)
    with pytest.raises(
        JudgeEndpointError, match=r"RRM_TEST_UNSET_KEY is not set.*export RRM_TEST_UNSET_KEY="
    ):
        api_key(JudgeEndpointConfig(url="http://h:1", api_key_env="RRM_TEST_UNSET_KEY"))
    monkeypatch.setenv("RRM_TEST_SET_KEY", PLANTED)
    assert api_key(JudgeEndpointConfig(url="http://h:1", api_key_env="RRM_TEST_SET_KEY")) == PLANTED
    assert api_key(JudgeEndpointConfig(url="http://h:1")) is None


def test_several_urls_are_one_served_engine_each():
    endpoint = JudgeEndpointConfig(url="http://a:1/, http://b:2")
    assert endpoint_urls(endpoint) == ["http://a:1", "http://b:2"]


def test_a_served_judge_takes_no_bundles_and_plan_says_where_it_is():
    served = ["judge.enabled=true", "judge.endpoint.url=http://10.0.0.5:8000", "judge.endpoint.model=rrm"]
    in_job = load_config("configs/demo_rrm.yaml")
    cfg = load_config("configs/demo_rrm.yaml", served)
    assert "judge" in placement_layout(in_job).roles
    assert "judge" not in placement_layout(cfg).roles and "judge" not in placement_layout(cfg).groups
    text, problems = build_report(cfg, declared_nodes(cfg), "here")
    assert not problems and "judge: served at http://10.0.0.5:8000 (judge.endpoint.url; rrm)" in text
    assert "starts no judge engines and reserves no judge bundles" in text
    # the key's variable NAME is all the config holds
    gpu = load_config("configs/grpo_rrm32b_judge_2x8.yaml", [*served, "judge.endpoint.api_key_env=RRM_KEY"])
    assert "judge" not in placement_layout(gpu).groups
    assert gpu.judge.endpoint.api_key_env == "RRM_KEY"
