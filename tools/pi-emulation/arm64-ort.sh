#!/usr/bin/env bash
# Run a Python script with the aarch64 onnxruntime wheel under qemu-user, as a Pi 4 or a Pi 5.
#
#   tools/pi-emulation/arm64-ort.sh a72|a76 SCRIPT.py [ARGS...]     (root; minutes the first time)
#
# a72 is a Cortex-A72 without the dot-product instructions (Pi 4), a76 a Cortex-A76 with them
# (Pi 5): qemu's CPU model sets the feature bits onnxruntime's MLAS reads, so each runs the
# kernels that CPU would (not its speed: emulation is 8-16x slower). Used to check that the
# shipped bundle computes the same integers on ARM64 as on x86 (models/README.md). The first
# run builds /var/cache/feederd-arm64 (FEEDERD_ARM64 overrides it) from Debian's arm64 archive
# (python3 only, unpacked, nothing configured) and the aarch64 wheels from PyPI; onnxruntime
# reads /proc/cpuinfo, so an ARM one is bind-mounted over it in a private mount namespace.
set -euo pipefail

CPU=${1:?usage: arm64-ort.sh a72|a76 SCRIPT.py [ARGS...]}
shift
ROOT=${FEEDERD_ARM64:-/var/cache/feederd-arm64}
ORT=$(python3 -c 'import onnxruntime; print(onnxruntime.__version__)')
command -v qemu-aarch64-static >/dev/null || apt-get install -y -q qemu-user-static >&2

if [ ! -x "$ROOT/root/usr/bin/python3.11" ]; then
  mkdir -p "$ROOT"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 bookworm \
    "$ROOT/root" http://deb.debian.org/debian >"$ROOT/debootstrap.log" 2>&1
  for deb in "$ROOT"/root/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT/root"; done
fi
if [ ! -d "$ROOT/site/onnxruntime" ]; then
  pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    -d "$ROOT/wheels" "onnxruntime==$ORT" numpy >&2
  for wheel in "$ROOT"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$ROOT/site"; done
fi

features="fp asimd evtstrm crc32 cpuid" part=0xd08 model=cortex-a72
if [ "$CPU" = a76 ]; then
  features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm"
  features="$features lrcpc dcpop asimddp" part=0xd0b model=cortex-a76
fi
printf 'processor\t: 0\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: %s\n\n' \
  "$features" "$part" >"$ROOT/cpuinfo-$CPU"

exec unshare --mount bash -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$ROOT/cpuinfo-$CPU" \
  env PYTHONPATH="$ROOT/site" PYTHONHOME="$ROOT/root/usr" \
  qemu-aarch64-static -cpu "$model" -L "$ROOT/root" "$ROOT/root/usr/bin/python3.11" "$@"
