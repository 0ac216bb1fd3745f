#!/usr/bin/env bash
# The main job (README): set up, start the whole platform on the embedded default (no API keys, no
# Docker), place a demo call from a recorded Russian caller, then keep running for the browser.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/vp up --demo "$@"
