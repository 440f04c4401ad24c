# The two commands: `make demo` and `make test`. Each bootstraps what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python

CXX ?= g++
CXXFLAGS ?= -std=c++17 -Wall -Wextra -Werror -O2
FW := firmware
FW_CORE := $(FW)/skulljaw/src/skulljaw_core.cpp $(FW)/skulljaw/src/skulljaw_core.h

.PHONY: demo test bootstrap clean firmware-test

bootstrap:
	@VENV=$(VENV) bash scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/skull demo

test: firmware-test
	@VENV=$(VENV) EXTRAS=test,ears,wake,voice bash scripts/bootstrap.sh
	$(PY) -m pytest -q -n auto --dist loadfile

# the firmware's logic, compiled and unit-tested on this machine (g++ only), and the
# simulator the serial driver's tests talk to over a pseudo-terminal
firmware-test: $(FW)/build/test_core $(FW)/build/skulljaw-sim
	$(FW)/build/test_core

$(FW)/build/test_core: $(FW)/test/test_core.cpp $(FW_CORE)
	@command -v $(CXX) >/dev/null || bash scripts/bootstrap.sh --system-only
	@mkdir -p $(FW)/build
	$(CXX) $(CXXFLAGS) -o $@ $(FW)/test/test_core.cpp $(FW)/skulljaw/src/skulljaw_core.cpp

$(FW)/build/skulljaw-sim: $(FW)/sim/sim_main.cpp $(FW_CORE)
	@mkdir -p $(FW)/build
	$(CXX) $(CXXFLAGS) -o $@ $(FW)/sim/sim_main.cpp $(FW)/skulljaw/src/skulljaw_core.cpp

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(FW)/build
