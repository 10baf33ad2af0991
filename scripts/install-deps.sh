#!/usr/bin/env bash
# Installs the Debian 12 packages MusicFS needs to build, run and test, skipping those already there.
# Idempotent; needs root (or sudo). Used by the quickstart, the test runner and CI.
set -euo pipefail

packages=(
        # build
        meson ninja-build pkg-config gcc
        libfuse3-dev libsqlite3-dev liblmdb-dev libsystemd-dev libavformat-dev libavutil-dev
        libinih-dev libcmocka-dev libssl-dev libssh2-1-dev libcurl4-openssl-dev libxml2-dev
        # run
        fuse3 dbus dbus-daemon systemd
        # test: real encoders and probes, the bus mock, XML and unit lint
        ffmpeg flac python3 python3-dbus python3-dbusmock python3-gi libxml2-utils sqlite3 procps util-linux lmdb-utils
        # test peers: OpenSSH's sshd (the SFTP origin's peer) and ssh-keygen
        openssh-server openssh-client
        # test peers: node for s3rver (the S3 origin's peer, tests/peers/package.json)
        nodejs
)
# Debian's npm package, unless an npm came with another nodejs build (NodeSource bundles it).
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
        echo "install-deps: all ${#packages[@]} packages present"
else
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        echo "install-deps: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# npm test peers, pinned by tests/peers/package-lock.json.
peers="$(cd "$(dirname "$0")/.." && pwd)/tests/peers"
if [ ! -d "$peers/node_modules" ] && command -v npm >/dev/null; then
        echo "install-deps: npm ci --prefix $peers"
        npm ci --prefix "$peers" --no-audit --no-fund
fi
