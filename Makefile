# Set-up on a fresh machine (Python 3.10+): `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e ".[dev]"

install: $(PY)

# Segments the example photo with the reference configuration (downloads weights at first use).
demo: $(PY)
	$(VENV)/bin/fbseg segment assets/cat.jpg --classes "cat,rug; carpet,wall" --overlay -o fbseg-out

test: $(PY)
	$(PY) -m pytest -q tests

# Lint and format check (ruff, configured in pyproject.toml).
lint: $(PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: install demo test lint
