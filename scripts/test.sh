#!/usr/bin/env bash
# The test command (README): set up everything, then lint, type-check and run the whole suite.
# Uses the NATS/Postgres/Redis on loopback when they run, embedded ones from PyPI otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck (setup scripts), lua5.2 (the FreeSWITCH robot.lua), chromium (the bundled page in a real browser)
VP_EXTRA_APT_PACKAGES="shellcheck lua5.2 chromium" bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict on shared and the development stack)"
mypy -p voiceplatform -p voiceplatform_devstack
mypy -p vp_gateway_web -p vp_gateway_fs -p vp_vad -p vp_realtime -p vp_asr -p vp_llm -p vp_tts -p vp_router -p vp_recorder
echo "== pytest"
set +e
pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
