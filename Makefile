# The two commands: `make demo` and `make test`. Each bootstraps what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bootstrap clean

bootstrap:
	@VENV=$(VENV) bash scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/skull demo

test: bootstrap
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
