#!/usr/bin/env bash
# Install feederd as a hardened systemd service on Raspberry Pi OS (Bookworm or later, 64-bit).
#
#   sudo tools/install-pi.sh                 install or upgrade from this checkout, start it
#   sudo tools/install-pi.sh --uninstall     remove the service and the venv; keep data+config
#   sudo tools/install-pi.sh --uninstall --purge   ... and the data, config, user and group
#   tools/install-pi.sh --dry-run            print every system change instead of making it
#
# Safe to run again: each step checks what is already there. docs/raspberry-pi.md explains it.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(cd "$SCRIPT_DIR/.." && pwd)

APP=feederd
PREFIX=/opt/feederd
VENV=$PREFIX/venv
CONF_DIR=/etc/feederd
CONFIG=$CONF_DIR/feederd.toml
UNIT=/etc/systemd/system/feederd.service
STATE_DIRS=(/var/lib/feederd /var/cache/feederd /var/log/feederd)
BIN_LINK=/usr/local/bin/feederd
APT_BASE=(python3 python3-venv python3-numpy ca-certificates)
APT_PI=(python3-picamera2)

ROOT=""            # --root: a throw-away root directory (for tests); "" is the real system
DRY_RUN=0
ACTION=install
PURGE=0
USE_APT=1
START=1
PYTHON=/usr/bin/python3
SOURCE=""
PI_EXTRA=auto      # auto: only where python3-picamera2 is installable
PIP_OPTS=()

usage() {
  cat <<EOF
Usage: $0 [options]

Install (default) or remove feederd as a systemd service.

  --uninstall        stop and remove the service, the venv and the unit; keep data and config
  --purge            with --uninstall: also remove /var/lib/feederd, /var/cache/feederd,
                     /var/log/feederd, /etc/feederd, the feederd user and group
  --dry-run          print each system change (prefixed "+ ") instead of making it
  --root DIR         install into DIR instead of / (a throw-away root for tests): no apt,
                     no systemctl start; DIR must hold etc/passwd and etc/group
  --source SRC       what pip installs: a checkout, wheel, sdist or requirement
                     (default: this checkout, $CHECKOUT)
  --python PATH      interpreter the venv is made from (default: $PYTHON)
  --no-apt           do not run apt-get (the packages are already there)
  --no-pi            do not install python3-picamera2 or the [pi] extra (USB/RTSP cameras)
  --no-start         install and enable, but do not (re)start the service
  --pip-option OPT   pass OPT to pip install (repeatable, e.g. --pip-option=--no-index)
  -h, --help         this text
EOF
}

die() { printf 'install-pi: error: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'install-pi: warning: %s\n' "$*" >&2; }

# run CMD...: do it, or in --dry-run print it shell-quoted after "+ ".
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# write_file DEST MODE GROUP: write stdin to DEST (atomically) owned by root:GROUP.
write_file() {
  local dest=$1 mode=$2 group=$3 tmp
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ write %q (mode %s, root:%s)\n' "$dest" "$mode" "$group"
    cat >/dev/null
    return
  fi
  tmp=$(mktemp "$dest.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  chown "0:$(group_id "$group")" "$tmp"
  mv -f "$tmp" "$dest"
}

# Paths inside the target root.
r() { printf '%s%s' "$ROOT" "$1"; }

# The numeric id of group $1 in the target root (the host may not have it); its name if none
# (a dry run, before the group is made).
group_id() {
  local gid
  gid=$(awk -F: -v g="$1" '$1 == g { print $3 }' "$(r /etc/group)")
  echo "${gid:-$1}"
}
has_group() { grep -q "^$1:" "$(r /etc/group)"; }
has_user() { grep -q "^$1:" "$(r /etc/passwd)"; }
in_group() { awk -F: -v g="$2" -v u="$1" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 } END { exit !f }' "$(r /etc/group)"; }
prefix_opt() { [ -n "$ROOT" ] && printf -- '--prefix\n%s\n' "$ROOT"; true; }
systemctl_() { if [ -n "$ROOT" ]; then run systemctl --root="$ROOT" "$@"; else run systemctl "$@"; fi; }
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --uninstall) ACTION=uninstall ;;
      --purge) PURGE=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
      --root=*) ROOT=${1#*=} ;;
      --source) [ $# -ge 2 ] || die "--source needs a value"; SOURCE=$2; shift ;;
      --source=*) SOURCE=${1#*=} ;;
      --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift ;;
      --python=*) PYTHON=${1#*=} ;;
      --no-apt) USE_APT=0 ;;
      --no-pi) PI_EXTRA=no ;;
      --no-start) START=0 ;;
      --pip-option) [ $# -ge 2 ] || die "--pip-option needs a value"; PIP_OPTS+=("$2"); shift ;;
      --pip-option=*) PIP_OPTS+=("${1#*=}") ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
  [ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"
  if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
  fi
  if [ -n "$ROOT" ]; then
    USE_APT=0
    START=0
  fi
  SOURCE=${SOURCE:-$CHECKOUT}
}

preflight() {
  if [ ! -f "$(r /etc/passwd)" ] || [ ! -f "$(r /etc/group)" ]; then
    die "$(r /etc/passwd) or $(r /etc/group) is missing"
  fi
  if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 $*), or try --dry-run to see what it would do"
  fi
  [ "$ACTION" = install ] || return 0
  [ -f "$CHECKOUT/systemd/feederd.service" ] || die "$CHECKOUT/systemd/feederd.service is missing"
  local arch
  arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
  case $arch in
    arm64|aarch64|amd64|x86_64) ;;
    armhf|armel|armv7l|armv6l)
      die "this is a 32-bit system ($arch): onnxruntime publishes no 32-bit ARM wheels; install the 64-bit Raspberry Pi OS (Bookworm or later)" ;;
    *) warn "untested architecture $arch" ;;
  esac
  if [ -r /etc/os-release ]; then
    local version_id
    # shellcheck disable=SC1091
    version_id=$(. /etc/os-release; echo "${VERSION_ID:-0}")
    [ "${version_id%%.*}" -ge 12 ] 2>/dev/null \
      || warn "expected Debian/Raspberry Pi OS 12 (Bookworm) or later, found VERSION_ID=$version_id"
  fi
  [ -x "$PYTHON" ] || [ "$USE_APT" = 1 ] || die "--python $PYTHON is not executable"
}

# --- install ------------------------------------------------------------------------------------

want_pi() {  # decide once whether to install picamera2 and the [pi] extra
  [ "$PI_EXTRA" = auto ] || return 0
  if [ -n "$ROOT" ]; then PI_EXTRA=no; return; fi
  if apt-cache show python3-picamera2 >/dev/null 2>&1; then
    PI_EXTRA=yes
  else
    PI_EXTRA=no
    warn "python3-picamera2 is not available from apt (not Raspberry Pi OS?): installing without the Pi camera; USB/RTSP cameras work through OpenCV"
  fi
}

install_packages() {
  if [ "$USE_APT" = 0 ]; then
    say "skipping apt-get (--no-apt or --root)"
    return
  fi
  say "installing system packages"
  run apt-get update
  want_pi
  local packages=("${APT_BASE[@]}")
  [ "$PI_EXTRA" = yes ] && packages+=("${APT_PI[@]}")
  # --no-install-recommends: picamera2 recommends the Qt/OpenGL preview stack, unused here.
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
}

ensure_user() {
  if has_group "$APP"; then
    say "group $APP exists"
  else
    say "creating system group $APP"
    mapfile -t p < <(prefix_opt)
    run groupadd "${p[@]}" --system "$APP"
  fi
  has_group video || { mapfile -t p < <(prefix_opt); run groupadd "${p[@]}" --system video; }
  mapfile -t p < <(prefix_opt)
  if has_user "$APP"; then
    say "user $APP exists"
    in_group "$APP" video || run usermod "${p[@]}" --append --groups video "$APP"
  else
    say "creating system user $APP (groups: $APP, video)"
    run useradd "${p[@]}" --system --gid "$APP" --groups video --home-dir /var/lib/feederd \
      --no-create-home --shell /usr/sbin/nologin --comment "feederd bird-feeder daemon" "$APP"
  fi
}

make_venv() {
  local cfg; cfg=$(r "$VENV/pyvenv.cfg")
  if [ -f "$cfg" ] && grep -Eq '^include-system-site-packages *= *true' "$cfg"; then
    say "venv $VENV exists (with system site packages)"
    return
  fi
  if [ -e "$(r "$VENV")" ]; then
    say "venv $VENV lacks --system-site-packages (picamera2 comes from apt): recreating it"
    run rm -rf "$(r "$VENV")"
  fi
  say "creating venv $VENV with --system-site-packages"
  run install -d -m 0755 "$(r "$PREFIX")"
  run "$PYTHON" -m venv --system-site-packages "$(r "$VENV")"
}

# numpy comes from apt (picamera2's compiled helpers are built against it): pin pip to it, so
# that opencv-python-headless or onnxruntime cannot pull a second, incompatible numpy.
write_constraints() {
  local numpy
  numpy=$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
  {
    echo "# pip constraints for $VENV, written by tools/install-pi.sh"
    [ -n "$numpy" ] && echo "numpy==$numpy"
    true
  } | write_file "$(r "$PREFIX/constraints.txt")" 0644 root
}

install_feederd() {
  local spec=$SOURCE
  want_pi
  [ "$PI_EXTRA" = yes ] && spec="${SOURCE}[pi]"
  say "installing $spec into $VENV"
  write_constraints
  run "$(r "$VENV/bin/python")" -m pip install --quiet --disable-pip-version-check \
    --constraint "$(r "$PREFIX/constraints.txt")" "${PIP_OPTS[@]}" "$spec"
  run install -d -m 0755 "$(r "$PREFIX/docs")"
  run install -m 0644 "$CHECKOUT/docs/raspberry-pi.md" "$(r "$PREFIX/docs/raspberry-pi.md")"
  run install -m 0644 "$CHECKOUT/docs/feederd.example.toml" "$(r "$PREFIX/docs/feederd.example.toml")"
  if [ -L "$(r "$BIN_LINK")" ] || [ ! -e "$(r "$BIN_LINK")" ]; then
    run install -d -m 0755 "$(r "$(dirname "$BIN_LINK")")"
    run ln -sfn "$VENV/bin/feederd" "$(r "$BIN_LINK")"
  else
    warn "$BIN_LINK exists and is not a link: left alone"
  fi
}

default_config() {
  # Never the demo clip: a feeder that silently replays cartoons looks like it works.
  local camera
  if [ "$PI_EXTRA" = yes ]; then
    camera='kind = "picamera2"         # the Pi camera module on the CSI connector
# For a USB webcam instead: kind = "opencv" and source = "0" (its index, /dev/video0).'
  else
    camera='kind = "opencv"            # no picamera2 here: a USB webcam or a network camera
source = "0"               # /dev/video0; or "rtsp://user@host/stream", a video file, a folder'
  fi
  cat <<EOF
# feederd configuration, written by tools/install-pi.sh (it never overwrites this file).
# Every key has a default; unknown keys are errors. Check a change with
#   sudo -u feederd feederd check-config --config $CONFIG
# then apply it with: sudo systemctl reload feederd
# The MQTT password does not belong here: put it in $CONF_DIR/mqtt_password (mode 0600).
# Every key, with its default: $PREFIX/docs/feederd.example.toml

state_dir = "/var/lib/feederd"

[camera]
$camera
# source = "demo" replays the bundled cartoon clip through the demo model: a test, not a feeder.
# width = 1280
# height = 720

[mqtt]
host = "localhost"
# port = 1883
# username = "feeder"
# tls = false

[logging]
level = "INFO"
EOF
}

write_config() {
  local dir gid; dir=$(r "$CONF_DIR"); gid=$(group_id "$APP")
  if [ ! -d "$dir" ]; then
    run install -d -m 0750 -o 0 -g "$gid" "$dir"
  elif [ "$(stat -c '%u:%g %a' "$dir")" != "0:$gid 750" ]; then
    # systemd's ConfigurationDirectoryMode=0750 keeps the mode; the group must be ours.
    run chown "0:$gid" "$dir"
    run chmod 0750 "$dir"
  fi
  if [ -e "$(r "$CONFIG")" ]; then
    say "$CONFIG exists: left as it is"
    return
  fi
  say "writing the default $CONFIG"
  default_config | write_file "$(r "$CONFIG")" 0640 "$APP"
}

install_unit() {
  local src=$CHECKOUT/systemd/feederd.service
  if [ -f "$(r "$UNIT")" ] && cmp -s "$src" "$(r "$UNIT")"; then
    say "unit $UNIT is up to date"
  else
    say "installing unit $UNIT"
    run install -d -m 0755 "$(r "$(dirname "$UNIT")")"
    run install -m 0644 "$src" "$(r "$UNIT")"
  fi
}

start_service() {
  if systemd_running; then
    systemctl_ daemon-reload
  fi
  systemctl_ enable feederd.service
  if [ "$START" = 0 ]; then
    say "not starting the service (--no-start or --root)"
  elif ! systemd_running; then
    warn "systemd is not running here: start feederd when it is (systemctl start feederd)"
  else
    # restart, not start: a re-run is an upgrade, and the new code must be the one running.
    systemctl_ restart feederd.service
    say "started; follow it with: journalctl -u feederd -f"
  fi
}

do_install() {
  install_packages
  ensure_user
  make_venv
  install_feederd
  write_config
  install_unit
  start_service
  say "done. Check the set-up with: sudo -u feederd feederd doctor"
}

# --- uninstall ----------------------------------------------------------------------------------

remove() {  # remove PATH... that exist
  local path
  for path in "$@"; do
    if [ -e "$path" ] || [ -L "$path" ]; then run rm -rf "$path"; fi
  done
}

do_uninstall() {
  if [ -f "$(r "$UNIT")" ]; then
    if systemd_running; then
      systemctl_ disable --now feederd.service
    else
      systemctl_ disable feederd.service
    fi
  fi
  remove "$(r "$UNIT")"
  systemd_running && systemctl_ daemon-reload
  [ -L "$(r "$BIN_LINK")" ] && remove "$(r "$BIN_LINK")"
  remove "$(r "$PREFIX")"
  if [ "$PURGE" = 0 ]; then
    say "kept ${STATE_DIRS[*]} and $CONF_DIR (remove them with --uninstall --purge)"
    return
  fi
  local dir
  for dir in "${STATE_DIRS[@]}" "$CONF_DIR"; do remove "$(r "$dir")"; done
  mapfile -t p < <(prefix_opt)
  has_user "$APP" && run userdel "${p[@]}" "$APP"
  # userdel may already have removed the group of the same name (USERGROUPS_ENAB).
  has_group "$APP" && run groupdel "${p[@]}" "$APP"
  say "purged"
}

main() {
  parse_args "$@"
  preflight "$@"
  [ "$DRY_RUN" = 0 ] || say "dry run: nothing is changed; each change is printed after '+'"
  if [ "$ACTION" = install ]; then do_install; else do_uninstall; fi
}

main "$@"
