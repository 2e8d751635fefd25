#!/usr/bin/env bash
# Build (once) and cache a minimal Debian root that boots systemd under systemd-nspawn.
#
#   tools/pi-emulation/roots.sh SUITE        print the path of the cached tarball, building it
#                                            first if absent (~7 min from deb.debian.org)
#
# The tarball is /var/cache/feederd-pi-roots/SUITE.tar (FEEDERD_PI_ROOTS overrides the folder).
# What goes in is what Raspberry Pi OS Lite gives feederd: systemd, dbus, python3 with venv and
# pip, and Debian's numpy (install-pi.sh pins pip to it). Nothing of feederd is in the cache.
set -euo pipefail

SUITE=${1:?usage: roots.sh SUITE (bookworm or trixie)}
CACHE=${FEEDERD_PI_ROOTS:-/var/cache/feederd-pi-roots}
MIRROR=${FEEDERD_PI_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,python3-numpy,python3-pip,procps,ca-certificates
TARBALL=$CACHE/$SUITE.tar

if [ -f "$TARBALL" ]; then
  echo "$TARBALL"
  exit 0
fi
install -d -m 0755 "$CACHE"
work=$(mktemp -d "$CACHE/.build-$SUITE.XXXXXX")
trap 'rm -rf "$work"' EXIT
printf 'pi-emulation: debootstrap %s into %s (minutes)\n' "$SUITE" "$work" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
# localhost must resolve (the broker and doctor use it); nspawn does not write /etc/hosts.
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$work/root/etc/hosts"
echo "pi-$SUITE" >"$work/root/etc/hostname"
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar -C "$work/root" -cf "$work/root.tar" .
mv "$work/root.tar" "$TARBALL"
echo "$TARBALL"
