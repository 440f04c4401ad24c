#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on Debian, Ubuntu or Raspberry Pi OS:
# system packages (only when missing), then a virtual environment with the project in it.
# --system-only: the system packages alone (make firmware-test needs just g++).
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need+=(libportaudio2)
command -v g++ >/dev/null 2>&1 || need+=(g++)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${need[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "bootstrap: need root (or sudo) to install: ${need[*]}" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "${1:-}" = "--system-only" ]; then exit 0; fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "bootstrap: installing Python packages into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
    touch "$VENV/.installed"
fi
