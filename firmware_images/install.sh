#!/bin/sh
# edgefleet agent installer: from a fresh Raspberry Pi OS / Debian / Ubuntu to an enrolled device.
#
#   curl -fsSL https://HUB/install.sh | sudo sh -s -- --token TOKEN
#   sudo sh install.sh --hub https://HUB --token TOKEN --wheel edgefleet-0.1.0-py3-none-any.whl
#
# Steps (each prints what it does; a failure names its step):
#   1 checks (root, OS, architecture, board)     6 venv + the agent wheel (/opt/edgefleet/venv)
#   2 system packages (python3-venv)             7 Coral runtime (only with --coral std|max)
#   3 service user `edgefleet` (system, no login) 8 enrollment (one-time token -> agent.toml 0640)
#   4 directories and their owners               9 systemd unit, enabled (and started when systemd
#   5 the wheel (from the hub, or --wheel FILE)    runs: not in a chroot or an image build)
#
# Rerun-safe: an existing user, venv or enrollment is kept (a new wheel is installed over the old
# one; --reenroll trades a new token). --prefix DIR installs under DIR instead of / (tests).
# Exit codes: 0 installed; 1 a step failed (the message names it); 2 bad arguments.
set -eu

# Filled in by the hub that serves this script (GET /install.sh); empty in the source tree.
EF_HUB_DEFAULT=""
EF_WHEEL_DEFAULT=""
EF_ROOT_SHA256_DEFAULT=""

SERVICE_USER=edgefleet
UNIT=edgefleet-agent.service
# The [agent] extra without ai-edge-litert and simplejpeg, for armv7l (32-bit Raspberry Pi OS):
# neither has a 32-bit ARM wheel. Keep in step with pyproject.toml (a test compares them).
ARMV7_DEPS="paho-mqtt>=2.1 numpy>=1.26 pillow>=10 orjson>=3.9 zstandard==0.25.0"

HUB="$EF_HUB_DEFAULT"
WHEEL_NAME="$EF_WHEEL_DEFAULT"
ROOT_SHA256="$EF_ROOT_SHA256_DEFAULT"
TOKEN=""
WHEEL=""
UNIT_FILE=""
CORAL=""
BOARD=""
PREFIX=""
REENROLL=0
STEP="arguments"

usage() {
  cat <<'EOF'
usage: install.sh --hub URL --token TOKEN [--wheel FILE] [--coral std|max] [--board NAME]
                  [--root-sha256 HEX] [--unit FILE] [--reenroll] [--prefix DIR]
  --hub URL          the hub (default: the hub this script was downloaded from)
  --token TOKEN      one-time enrollment token (edgefleet-hub devices enroll ID); not needed when
                     the device is already enrolled
  --wheel FILE       install this wheel instead of downloading it from the hub (offline installs)
  --coral std|max    also install the Coral Edge TPU runtime (libedgetpu1-std or -max: max runs
                     the TPU at twice the clock and gets hot; see firmware_images/README.md)
  --board NAME       board name matched against bundles (default: detected, e.g. rpi4, rpi5)
  --root-sha256 HEX  expected sha256 of the hub's root.json (refuse any other trust root)
  --unit FILE        the systemd unit to install (default: next to --wheel, else from the hub)
  --reenroll         enroll again with --token, replacing agent.toml and root.json
  --prefix DIR       install under DIR instead of / (tests; systemd is never touched then)
EOF
}

say() { printf '%s\n' "install.sh: $*"; }
step() {
  STEP="$1"
  printf '%s\n' "==> [$1] $2"
}
die() {
  printf '%s\n' "install.sh: FAILED at step $STEP: $*" >&2
  exit 1
}
WORK=""
on_exit() {
  rc=$?
  [ -z "$WORK" ] || rm -rf "$WORK"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then
    printf '%s\n' "install.sh: stopped at step $STEP (exit $rc); fix the cause above and rerun: it is rerun-safe" >&2
  fi
}
trap on_exit EXIT

download() { # URL DEST: python3 is always there, curl and wget may not be
  python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)' "$1" "$2" </dev/null || die "download of $1 failed"
}

need_value() {
  if [ "$2" -lt 2 ]; then
    printf '%s\n' "install.sh: $1 needs a value" >&2
    usage >&2
    exit 2
  fi
}

# Everything runs from main, called on the last line: with `curl | sh` the shell has then read the
# whole script before any step runs (a cut-off download runs nothing), and no command can eat the
# rest of the script from stdin.
main() {
while [ "$#" -gt 0 ]; do
  case "$1" in
    --hub) need_value "$1" "$#"; HUB="$2"; shift 2 ;;
    --token) need_value "$1" "$#"; TOKEN="$2"; shift 2 ;;
    --wheel) need_value "$1" "$#"; WHEEL="$2"; shift 2 ;;
    --unit) need_value "$1" "$#"; UNIT_FILE="$2"; shift 2 ;;
    --coral) need_value "$1" "$#"; CORAL="$2"; shift 2 ;;
    --board) need_value "$1" "$#"; BOARD="$2"; shift 2 ;;
    --root-sha256) need_value "$1" "$#"; ROOT_SHA256="$2"; shift 2 ;;
    --prefix) need_value "$1" "$#"; PREFIX="${2%/}"; shift 2 ;;
    --reenroll) REENROLL=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) printf '%s\n' "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$CORAL" in
  "" | std | max) ;;
  *) printf '%s\n' "install.sh: --coral expects std or max, got '$CORAL'" >&2; exit 2 ;;
esac
HUB="${HUB%/}"

R="$PREFIX"                # the root everything is written under ("" = the real /)
VENV=/opt/edgefleet/venv
CONF_DIR=/etc/edgefleet
STATE_DIR=/var/lib/edgefleet-agent

# ---------------------------------------------------------------------------------------------
step 1/9 "checks: user, OS, architecture, board"
[ "$(id -u)" = 0 ] || die "must run as root (curl ... | sudo sh -s -- ...)"
if [ -n "$R" ]; then
  [ -d "$R" ] || die "--prefix $R is not a directory"
  say "installing under prefix $R (systemd will not be touched)"
fi
OS="unknown"
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  OS="$(. /etc/os-release && printf '%s %s' "${ID:-?}" "${VERSION_ID:-?}")"
fi
ARCH="$(uname -m)"
say "OS $OS, architecture $ARCH"
case "$ARCH" in
  aarch64 | x86_64) ;;
  armv7l) say "armv7l (32-bit OS): no LiteRT or simplejpeg wheels exist for it; see step 6" ;;
  *) die "architecture $ARCH is not supported (aarch64, armv7l, x86_64)" ;;
esac
if [ -z "$BOARD" ]; then
  MODEL=""
  [ -r /proc/device-tree/model ] && MODEL="$(tr -d '\0' </proc/device-tree/model)"
  case "$MODEL" in
    "Raspberry Pi 5"*) BOARD=rpi5 ;;
    "Raspberry Pi 4"* | "Raspberry Pi Compute Module 4"*) BOARD=rpi4 ;;
    "Raspberry Pi 3"*) BOARD=rpi3 ;;
    *"Coral"* | *"Phanbell"*) BOARD=coral-devboard ;;
    *) BOARD="generic-$ARCH" ;;
  esac
  say "board $BOARD (from '${MODEL:-no device tree}'; override with --board)"
fi
[ -n "$HUB" ] || die "no hub: pass --hub https://HUB (or download this script from the hub)"
case "$HUB" in
  http://* | https://*) ;;
  *) die "--hub expects an http(s):// URL, got '$HUB'" ;;
esac

# ---------------------------------------------------------------------------------------------
step 2/9 "system packages: python3 with venv"
if command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' 2>/dev/null; then
  say "python3 $(python3 -c 'import sys; print(sys.version.split()[0])') with venv: present"
elif command -v apt-get >/dev/null 2>&1; then
  say "apt-get install python3 python3-venv ca-certificates"
  DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv ca-certificates \
    || die "apt-get install python3-venv failed"
else
  die "python3 with the venv module is missing and there is no apt-get to install it"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 is needed (Debian bookworm, Ubuntu 24.04)"

# ---------------------------------------------------------------------------------------------
step 3/9 "service user $SERVICE_USER (system, no login)"
in_file() { [ -f "$R$2" ] && cut -d: -f1 "$R$2" | grep -qx "$1"; }
id_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R$2"; }
USERADD_ROOT=""
[ -n "$R" ] && USERADD_ROOT="--prefix $R"
if in_file plugdev /etc/group; then
  say "group plugdev (Coral USB access): present"
else
  say "groupadd --system plugdev (the unit's SupplementaryGroups; libedgetpu's udev rule uses it)"
  # shellcheck disable=SC2086
  groupadd $USERADD_ROOT --system plugdev || die "groupadd plugdev failed"
fi
if in_file "$SERVICE_USER" /etc/passwd; then
  say "user $SERVICE_USER: present"
else
  say "useradd --system $SERVICE_USER (home $STATE_DIR, shell nologin, groups plugdev)"
  # shellcheck disable=SC2086
  useradd $USERADD_ROOT --system --user-group --groups plugdev --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "edgefleet agent" "$SERVICE_USER" || die "useradd $SERVICE_USER failed"
fi
SVC_UID="$(id_of "$SERVICE_USER" /etc/passwd)"
SVC_GID="$(id_of "$SERVICE_USER" /etc/group)"
if [ -z "$SVC_UID" ] || [ -z "$SVC_GID" ]; then
  die "user or group $SERVICE_USER has no id in $R/etc/passwd, $R/etc/group"
fi
say "user $SERVICE_USER is uid $SVC_UID gid $SVC_GID"

# ---------------------------------------------------------------------------------------------
step 4/9 "directories: $CONF_DIR (0750 root:$SERVICE_USER), $STATE_DIR (0750 $SERVICE_USER), $VENV"
mkdir -p "$R$CONF_DIR" "$R$STATE_DIR" "$R/opt/edgefleet" "$R/etc/systemd/system"
chown "0:$SVC_GID" "$R$CONF_DIR" && chmod 0750 "$R$CONF_DIR"
chown "$SVC_UID:$SVC_GID" "$R$STATE_DIR" && chmod 0750 "$R$STATE_DIR"
chmod 0755 "$R/opt/edgefleet"

# ---------------------------------------------------------------------------------------------
step 5/9 "the agent wheel"
WORK="$(mktemp -d)"
if [ -n "$WHEEL" ]; then
  [ -f "$WHEEL" ] || die "--wheel $WHEEL does not exist"
  say "using $WHEEL"
  DIST_DIR="$(cd "$(dirname "$WHEEL")" && pwd)"
else
  [ -n "$WHEEL_NAME" ] || die "no --wheel FILE and no wheel name from the hub (download install.sh from the hub)"
  case "$WHEEL_NAME" in
    edgefleet-*-py3-none-any.whl) ;;
    *) die "unexpected wheel name '$WHEEL_NAME'" ;;
  esac
  say "downloading $HUB/dist/$WHEEL_NAME"
  download "$HUB/dist/$WHEEL_NAME" "$WORK/$WHEEL_NAME"
  WHEEL="$WORK/$WHEEL_NAME"
  DIST_DIR=""
fi
dist_file() { # NAME -> a local path: next to the wheel, else from the hub
  if [ -n "$DIST_DIR" ] && [ -f "$DIST_DIR/$1" ]; then
    printf '%s\n' "$DIST_DIR/$1"
  else
    download "$HUB/dist/$1" "$WORK/$1"
    printf '%s\n' "$WORK/$1"
  fi
}

# ---------------------------------------------------------------------------------------------
step 6/9 "venv $VENV and the agent"
if [ -x "$R$VENV/bin/python" ]; then
  say "venv $VENV: present"
else
  say "python3 -m venv $VENV"
  python3 -m venv "$R$VENV" || die "python3 -m venv $R$VENV failed"
fi
PIP="$R$VENV/bin/python -m pip --disable-pip-version-check"
if [ "$ARCH" = armv7l ]; then
  say "armv7l: pip install the wheel without ai-edge-litert and simplejpeg (images decode with Pillow)"
  $PIP install --upgrade --no-deps "$WHEEL" || die "pip install $WHEEL failed"
  # shellcheck disable=SC2086
  $PIP install --upgrade "cryptography>=42" $ARMV7_DEPS || die "pip install of the agent's dependencies failed"
  if $PIP install --upgrade tflite-runtime; then
    say "tflite-runtime installed (piwheels): models run locally"
  else
    say "WARNING: no LiteRT for armv7l could be installed: this device serves only through the cloud"
    say "WARNING: fallback (cloud_url in agent.toml). For local inference use the 64-bit OS."
  fi
else
  say "pip install '$(basename "$WHEEL")[agent]'"
  $PIP install --upgrade "${WHEEL}[agent]" || die "pip install ${WHEEL}[agent] failed"
fi
AGENT="$R$VENV/bin/edgefleet-agent"
"$AGENT" --version || die "$AGENT does not run"

# ---------------------------------------------------------------------------------------------
step 7/9 "Coral Edge TPU runtime"
if [ -z "$CORAL" ]; then
  say "skipped (no --coral): the agent runs models on the CPU; rerun with --coral std|max to add it"
elif [ -n "$R" ]; then
  say "skipped under --prefix: the Coral runtime is installed with apt into the real root only"
else
  sh "$(dist_file coral-setup.sh)" --variant "$CORAL" --user "$SERVICE_USER" || die "coral-setup.sh failed"
fi

# ---------------------------------------------------------------------------------------------
step 8/9 "enrollment"
CONF="$R$CONF_DIR/agent.toml"
if [ -f "$CONF" ] && [ "$REENROLL" = 0 ]; then
  DEVICE="$(sed -n 's/^device_id = "\(.*\)"$/\1/p' "$CONF")"
  say "already enrolled as ${DEVICE:-?} ($CONF kept; --reenroll --token T to replace it)"
else
  [ -n "$TOKEN" ] || die "no --token: get one with 'edgefleet-hub devices enroll DEVICE_ID' on the hub"
  set -- --hub "$HUB" --token "$TOKEN" --config "$CONF" --state-dir "$R$STATE_DIR" --board "$BOARD" \
    --group "$SVC_GID"
  [ -n "$ROOT_SHA256" ] && set -- "$@" --root-sha256 "$ROOT_SHA256"
  [ "$REENROLL" = 1 ] && set -- "$@" --force
  say "edgefleet-agent enroll --hub $HUB --config $CONF --board $BOARD --group $SERVICE_USER${ROOT_SHA256:+ --root-sha256 $ROOT_SHA256}"
  "$AGENT" enroll "$@" || die "enrollment failed (the reason is above; a token is single-use and expires: ask for a new one)"
fi
chown "0:$SVC_GID" "$CONF" "$R$CONF_DIR/root.json" && chmod 0640 "$CONF" "$R$CONF_DIR/root.json"

# ---------------------------------------------------------------------------------------------
step 9/9 "systemd unit $UNIT"
if [ -n "$UNIT_FILE" ]; then
  [ -f "$UNIT_FILE" ] || die "--unit $UNIT_FILE does not exist"
else
  UNIT_FILE="$(dist_file "$UNIT")"
fi
install -m 0644 "$UNIT_FILE" "$R/etc/systemd/system/$UNIT"
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
  say "systemctl enable --now $UNIT (restarting it if it ran: the new wheel takes effect)"
  systemctl daemon-reload
  systemctl enable "$UNIT"
  systemctl restart "$UNIT" || die "the service did not start: journalctl -u edgefleet-agent -n 50"
  systemctl --no-pager --lines=0 status "$UNIT" || true
else
  # a chroot, an image build or --prefix: enable by symlink, as systemctl would; starts at boot
  mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
  ln -sf "/etc/systemd/system/$UNIT" "$R/etc/systemd/system/multi-user.target.wants/$UNIT"
  say "systemd is not running here (chroot, image build or --prefix): $UNIT enabled, not started; it starts at boot"
fi
say "done: edgefleet-agent installed and enrolled; logs: journalctl -u edgefleet-agent -f"
}

main "$@" </dev/null
