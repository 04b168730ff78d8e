# crossmoe developer commands. Every target sets up .venv first, so each one
# works on a fresh clone: `make test`, `make demo`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is installed first so that nothing pulls a CUDA build.
# Override for another build, e.g. `make TORCH_SPEC="torch==2.6.0" test`.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= nethack,minihack,minigrid,examples,test,docs,dev,sb3,rllib
# `make demo`: a short PPO run on NetHack, kickstarted from the rule agent softened (the best teacher in
# docs/results.md), then the agent, the rules and uniform random play on the same fresh episodes, and the
# plot of its score against both (runs/demo/score_vs_random.png).
DEMO_DIR ?= runs/demo
DEMO_ARGS ?= --total-timesteps 200000 --teacher rules --teacher-epsilon 0.1 --run-dir $(DEMO_DIR)
DEMO_EPISODES ?= 30
# `make minigrid`: the MiniGrid agent on MiniGrid-DoorKey-5x5-v0 (200k steps), into runs/minigrid.
MINIGRID_ARGS ?= --run-dir runs/minigrid
PYTEST_ARGS ?=
SPHINX := $(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

.PHONY: venv test demo minigrid quickstart docs bench lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $@

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(SPHINX) -q

demo: venv
	$(BIN)/python examples/ppo_nethack.py $(DEMO_ARGS)
	$(BIN)/python examples/evaluate.py --agent random --episodes $(DEMO_EPISODES) --out $(DEMO_DIR)/random.json
	$(BIN)/python examples/evaluate.py --agent rules --episodes $(DEMO_EPISODES) --out $(DEMO_DIR)/rules.json
	$(BIN)/python examples/evaluate.py $(DEMO_DIR)/checkpoints/last.pt --episodes $(DEMO_EPISODES) --out $(DEMO_DIR)/eval.json
	$(BIN)/python examples/plots.py $(DEMO_DIR) --floor $(DEMO_DIR)/random.json --rules $(DEMO_DIR)/rules.json \
		--evaluation $(DEMO_DIR)/eval.json

minigrid: venv
	$(BIN)/python examples/ppo_minigrid.py $(MINIGRID_ARGS)

quickstart: venv
	$(BIN)/python examples/quickstart.py

docs: venv
	$(SPHINX)

bench: venv
	$(BIN)/python benchmarks/bench_modules.py
	$(BIN)/python benchmarks/bench_policy.py
	$(BIN)/python benchmarks/bench_training.py

lint: venv
	$(BIN)/ruff check crossmoe tests examples benchmarks docs
	$(BIN)/ruff format --check crossmoe tests examples benchmarks docs

format: venv
	$(BIN)/ruff check --fix crossmoe tests examples benchmarks docs
	$(BIN)/ruff format crossmoe tests examples benchmarks docs

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .hypothesis .ruff_cache
