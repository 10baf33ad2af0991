#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and mounts a small generated sample library (or your
# own folder with --library) read-only, organised by tags. Run as root (FUSE mounts need it here).
#
#   scripts/quickstart.sh                      sample library at /tmp/musicfs
#   scripts/quickstart.sh --library ~/Music    your own folder instead
#   scripts/quickstart.sh --mountpoint /mnt/x  another (absolute) mountpoint
#   scripts/quickstart.sh --stop               unmount and stop what the quick start started
#
# The daemon talks D-Bus on a private session bus started here, since a fresh machine may have no
# system bus; the address is printed so that musicfsctl and busctl can reach it.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

library=""
mountpoint=/tmp/musicfs
state=/run/musicfs-quickstart
stop=0
while [ $# -gt 0 ]; do
        case "$1" in
                --library) library=$(realpath "$2"); shift 2 ;;
                --mountpoint) mountpoint="$2"; shift 2 ;;
                --stop) stop=1; shift ;;
                -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
                *) echo "quickstart: unknown argument '$1' (see --help)" >&2; exit 2 ;;
        esac
done

stop_running() {
        if [ -f "$state/musicfsd.pid" ]; then
                kill "$(cat "$state/musicfsd.pid")" 2>/dev/null || true
                for _ in $(seq 100); do kill -0 "$(cat "$state/musicfsd.pid")" 2>/dev/null || break; sleep 0.1; done
        fi
        [ -f "$state/bus.pid" ] && kill "$(cat "$state/bus.pid")" 2>/dev/null || true
        rm -rf "$state"
}

if [ "$stop" = 1 ]; then
        stop_running
        echo "MusicFS quick start stopped."
        exit 0
fi
case "$mountpoint" in /*) ;; *) echo "quickstart: --mountpoint must be absolute" >&2; exit 2 ;; esac

scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build

if [ -z "$library" ]; then
        library=/var/tmp/musicfs-sample
        if [ ! -f "$library/.expected.json" ]; then
                echo "Generating a sample library in $library (real FLAC/MP3/Ogg/Opus/M4A/WAV files)..."
                /usr/bin/python3 tests/lib/genlib.py sample "$library"
        fi
fi

stop_running
mkdir -p "$state" "$mountpoint" /var/tmp/musicfs-quickstart/cache
dbus-daemon --session --fork --print-address=3 --print-pid=4 3>"$state/bus.address" 4>"$state/bus.pid"
export DBUS_SESSION_BUS_ADDRESS
DBUS_SESSION_BUS_ADDRESS=$(head -n1 "$state/bus.address")

"$top/build/daemon/musicfsd" --user --origin "$library" \
        --cache-dir /var/tmp/musicfs-quickstart/cache "$mountpoint" >"$state/musicfsd.log" 2>&1 &
echo $! >"$state/musicfsd.pid"

for _ in $(seq 300); do
        grep -q " $mountpoint fuse" /proc/self/mounts && break
        kill -0 "$(cat "$state/musicfsd.pid")" 2>/dev/null || { cat "$state/musicfsd.log" >&2; exit 1; }
        sleep 0.1
done
grep -q " $mountpoint fuse" /proc/self/mounts || { echo "quickstart: mount did not appear" >&2; cat "$state/musicfsd.log" >&2; exit 1; }
# The first scan fills the tree in the background; wait for it to show the library.
for _ in $(seq 100); do
        [ -n "$(ls -A "$mountpoint")" ] && break
        sleep 0.1
done

echo
echo "MusicFS is mounted at $mountpoint (read-only, organised by tags). A look at it:"
echo
find "$mountpoint" -maxdepth 3 | sed "s|^$mountpoint|  $mountpoint|" | head -n 40
cat <<MSG

Try:
  ls -l "$mountpoint"/*/*                  # tracks with their sizes
  ffprobe "\$(find "$mountpoint" -name '*.flac' | head -n1)"
  export DBUS_SESSION_BUS_ADDRESS='$DBUS_SESSION_BUS_ADDRESS'
  build/client/musicfsctl --user status
  busctl --user introspect org.musicfs.Manager /org/musicfs/Manager
Daemon log: $state/musicfsd.log     Stop: scripts/quickstart.sh --stop
MSG
