#!/usr/bin/env bash
# Put the Smart Turn v3.2 end-of-turn model (BSD-2, 8.7 MB int8 ONNX) into a Python prefix. Idempotent.
#
#   scripts/fetch_smart_turn.sh [PYTHON [DEST]]   default PYTHON: python3
#
# The file ships inside the pipecat-ai wheel; only that one file is extracted (the package itself is
# never installed). It lands in DEST, by default <PYTHON's prefix>/share/voiceplatform/models/, where
# the VAD service looks.
set -euo pipefail

PYTHON="${1:-python3}"
VERSION=1.14.0
MEMBER=pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx
DEST="${2:-}"
if [[ -z "$DEST" ]]; then
    prefix="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
    [[ -n "$prefix" ]] || { echo "fetch_smart_turn.sh: $PYTHON has no prefix" >&2; exit 1; }
    DEST="$prefix/share/voiceplatform/models"
fi
TARGET="$DEST/smart-turn-v3.2-cpu.onnx"

if [[ -s "$TARGET" ]]; then
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps "pipecat-ai==$VERSION" -d "$tmp"
mkdir -p "$DEST"
"$PYTHON" - "$tmp" "$MEMBER" "$TARGET" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, member, target = sys.argv[1:]
(wheel,) = pathlib.Path(tmp).glob("pipecat_ai-*.whl")
partial = pathlib.Path(target + ".part")
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, partial.open("wb") as dst:
    shutil.copyfileobj(src, dst)
partial.replace(target)  # atomic: a half-written file is never taken for the model
PY
echo "fetch_smart_turn.sh: $TARGET"
