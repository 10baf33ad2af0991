#!/usr/bin/env bash
# Installs the Debian 12 packages MusicFS needs to build, run and test, skipping those already there.
# Idempotent; needs root (or sudo). Used by the quickstart, the test runner and CI.
set -euo pipefail

packages=(
        # build
        meson ninja-build pkg-config gcc
        libfuse3-dev libsqlite3-dev liblmdb-dev libsystemd-dev libavformat-dev libavutil-dev
        libinih-dev libcmocka-dev libssl-dev
        # run
        fuse3 dbus dbus-daemon systemd
        # test: real encoders and probes, the bus mock, XML and unit lint
        ffmpeg flac python3 python3-dbus python3-dbusmock python3-gi libxml2-utils sqlite3 procps util-linux lmdb-utils
)

missing=()
for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
        echo "install-deps: all ${#packages[@]} packages present"
        exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
