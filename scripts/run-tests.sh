#!/usr/bin/env bash
# Runs the whole test suite (unit, bus, fuse, resilience, lint) on a fresh build in ./build.
# Usage: scripts/run-tests.sh [meson test arguments, e.g. --suite unit]
# Needs root for the FUSE mounts (tests that cannot mount exit 77 and are reported as skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ ! -f build/build.ninja ]; then
        meson setup build -Dwerror=true
fi
ninja -C build
exec meson test -C build --print-errorlogs --num-processes 2 "$@"
