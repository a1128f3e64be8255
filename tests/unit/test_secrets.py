"""Secret values (cluster.env, anything whose key names a token, key or password) never show: MLflow
params and saved configs read `***`, the console is scrubbed, a submitted job's entrypoint carries no
value, and the upload leaves credential files out."""

from __future__ import annotations

import io
import os
from pathlib import Path

from omegaconf import OmegaConf

from rrm_ray.commands.submit import (
    EXCLUDES,
    SECRET_EXCLUDES,
    build_entrypoint,
    env_vars,
    hide_secrets,
    upload_listing,
)
from rrm_ray.config import REDACTED, is_secret, secret_values, to_flat_dict, to_yaml
from rrm_ray.logs import RedactingStream
from rrm_ray.validation import load_config

TOKEN = "hf_PLANTEDsecret0123456789"


def test_secret_keys_are_told_from_names_of_secrets():
    for key in (
        "cluster.env.ANYTHING",
        "judge.endpoint.api_key",
        "x.HF_TOKEN",
        "db.password",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert is_secret(key), key
    for key in (
        "judge.endpoint.api_key_env",
        "x.token_file",
        "judge.max_new_tokens",
        "judge.max_prompt_tokens",
    ):
        assert not is_secret(key), key  # the NAME of a variable, a path, a count: not a secret


def test_params_and_saved_configs_show_no_secret_value():
    cfg = load_config(None, [f"cluster.env.HF_TOKEN={TOKEN}", "cluster.env.OMP_NUM_THREADS=4"])
    flat = to_flat_dict(cfg)
    assert flat["cluster.env.HF_TOKEN"] == REDACTED and flat["cluster.env.OMP_NUM_THREADS"] == REDACTED
    assert TOKEN not in to_yaml(cfg)
    assert OmegaConf.create(to_yaml(cfg)).cluster.env.HF_TOKEN == REDACTED
    assert load_config(None, []).cluster.env == {}  # the saved (redacted) config still loads
    assert to_flat_dict(cfg, redact=False)["cluster.env.HF_TOKEN"] == TOKEN
    assert secret_values(cfg) == [TOKEN, "4"]


def test_the_console_is_scrubbed():
    out = io.StringIO()
    stream = RedactingStream(out, [TOKEN])
    print(f"loading with token {TOKEN}!", file=stream)
    assert out.getvalue() == "loading with token ***!\n"


def test_a_submitted_entrypoint_carries_no_secret_value(monkeypatch):
    overrides, env = hide_secrets([f"cluster.env.HF_TOKEN={TOKEN}", "trainer.total_steps=2"])
    entrypoint = build_entrypoint("configs/quickstart.yaml", overrides)
    assert TOKEN not in entrypoint and "'cluster.env.HF_TOKEN=${oc.env:RRM_RAY_SECRET_0}'" in entrypoint
    assert env == {"RRM_RAY_SECRET_0": TOKEN}
    monkeypatch.setenv("RRM_RAY_SECRET_0", TOKEN)  # what the job's environment holds on the cluster
    assert load_config(None, overrides).cluster.env["HF_TOKEN"] == TOKEN
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    assert env_vars(["MY_TOKEN", "A=b"]) == {"MY_TOKEN": TOKEN, "A": "b"}  # KEY alone: from here


def test_the_upload_leaves_credential_files_out(tmp_path):
    files = {
        "train.py": "x = 1\n",
        "configs/job.yaml": "a: 1\n",
        ".env": "HF_TOKEN=x\n",
        ".env.local": "x\n",
        "deploy/server.pem": "x\n",
        "id.key": "x\n",
        ".netrc": "x\n",
        ".aws/credentials": "x\n",
        ".ssh/id_ed25519": "x\n",
        ".git/config": "x\n",
        "runs/ckpt/big.bin": "x\n",
    }
    for name, text in files.items():
        Path(tmp_path, name).parent.mkdir(parents=True, exist_ok=True)
        Path(tmp_path, name).write_text(text)
    count, size = upload_listing(tmp_path, EXCLUDES + SECRET_EXCLUDES)
    assert (count, size) == (2, len("x = 1\n") + len("a: 1\n"))
    assert os.path.exists(tmp_path / ".env")  # nothing deleted: only left out
