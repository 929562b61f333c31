#!/bin/sh
# Coral Edge TPU runtime for the edgefleet agent: libedgetpu, udev rules, group membership.
#
#   sudo sh coral-setup.sh --variant std            # Coral's apt repository, libedgetpu1-std
#   sudo sh coral-setup.sh --variant max            # full clock: faster, hotter (see below)
#   sudo sh coral-setup.sh --deb ./libedgetpu1-std_16.0tf2.19.1-1.bookworm_arm64.deb
#
# install.sh --coral std|max runs it. Steps: 1 Coral's apt repository (skipped with --deb),
# 2 libedgetpu1-std or -max (they replace each other), 3 PCIe/M.2 module: gasket driver + a udev
# rule giving /dev/apex_* to plugdev, 4 the service user into plugdev, 5 udev reloaded.
#
# std vs max: -max runs the TPU at its full clock (roughly 2x faster on compute-bound models) and
# the USB Accelerator gets hot: Coral's guidance is max only at <= 25 C ambient (std: <= 35 C).
# The official libedgetpu 16.0 was built against TF 2.5 and is reported to crash with newer
# LiteRT; the agent probes the delegate in a child process and falls back to the CPU if it does.
# A community build matching LiteRT (e.g. feranick/libedgetpu releases) installs with --deb.
# Exit codes: 0 done; 1 a step failed (named); 2 bad arguments.
set -eu

VARIANT=std
DEB=""
SERVICE_USER=edgefleet
KEYRING=/usr/share/keyrings/coral-edgetpu-archive-keyring.gpg
LIST=/etc/apt/sources.list.d/coral-edgetpu.list
REPO_URL=https://packages.cloud.google.com/apt
APEX_RULE=/etc/udev/rules.d/65-edgefleet-apex.rules
STEP=arguments

say() { printf '%s\n' "coral-setup.sh: $*"; }
step() {
  STEP="$1"
  printf '%s\n' "==> [coral $1] $2"
}
die() {
  printf '%s\n' "coral-setup.sh: FAILED at step $STEP: $*" >&2
  exit 1
}
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null; }

main() {
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --variant) [ "$#" -ge 2 ] || { say "--variant needs std or max" >&2; exit 2; }; VARIANT="$2"; shift 2 ;;
      --deb) [ "$#" -ge 2 ] || { say "--deb needs a file" >&2; exit 2; }; DEB="$2"; shift 2 ;;
      --user) [ "$#" -ge 2 ] || { say "--user needs a name" >&2; exit 2; }; SERVICE_USER="$2"; shift 2 ;;
      -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
      *) say "unknown argument: $1 (--variant std|max, --deb FILE, --user NAME)" >&2; exit 2 ;;
    esac
  done
  case "$VARIANT" in
    std | max) ;;
    *) say "--variant expects std or max, got '$VARIANT'" >&2; exit 2 ;;
  esac
  [ "$(id -u)" = 0 ] || die "must run as root"
  command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: only Debian-based systems are scripted"

  step 1/5 "package source"
  if [ -n "$DEB" ]; then
    [ -f "$DEB" ] || die "--deb $DEB does not exist"
    say "installing the given build $DEB (Coral's apt repository not used)"
  elif [ -f "$LIST" ] && [ -f "$KEYRING" ]; then
    say "Coral apt repository: present ($LIST)"
  else
    apt_install ca-certificates gnupg || die "apt-get install gnupg failed"
    say "adding Coral's apt repository $REPO_URL coral-edgetpu-stable (key to $KEYRING)"
    python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)' "$REPO_URL/doc/apt-key.gpg" /tmp/coral-apt-key.gpg || die "cannot download Coral's apt key"
    gpg --batch --yes --dearmor -o "$KEYRING" /tmp/coral-apt-key.gpg || die "gpg --dearmor of Coral's key failed"
    rm -f /tmp/coral-apt-key.gpg
    printf 'deb [signed-by=%s] %s coral-edgetpu-stable main\n' "$KEYRING" "$REPO_URL" >"$LIST"
  fi

  step 2/5 "libedgetpu1-$VARIANT"
  if [ "$VARIANT" = max ]; then
    # -max asks to accept running at full clock (the thermal warning above); this is that answer
    echo "libedgetpu1-max libedgetpu/accepted-eula select true" | debconf-set-selections
  fi
  if [ -n "$DEB" ]; then
    apt_install "$DEB" || die "apt-get install $DEB failed"
  else
    DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null || die "apt-get update failed"
    apt_install "libedgetpu1-$VARIANT" || die "apt-get install libedgetpu1-$VARIANT failed"
  fi
  say "libedgetpu: $(dpkg-query -W -f '${Package} ${Version}' 'libedgetpu1-*' 2>/dev/null | tr '\n' ' ')"

  step 3/5 "PCIe/M.2 module (apex driver)"
  if grep -qsx 0x1ac1 /sys/bus/pci/devices/*/vendor; then
    say "Coral PCIe/M.2 found: installing gasket-dkms (needs the kernel headers) and the apex udev rule"
    apt_install gasket-dkms || die "apt-get install gasket-dkms failed (install the kernel headers first)"
    printf '%s\n' 'SUBSYSTEM=="apex", MODE="0660", GROUP="plugdev"' >"$APEX_RULE"
  else
    say "no PCIe/M.2 Edge TPU (vendor 0x1ac1) on the PCI bus: skipped"
  fi

  step 4/5 "group membership"
  getent group plugdev >/dev/null || groupadd --system plugdev
  if id "$SERVICE_USER" >/dev/null 2>&1; then
    usermod -aG plugdev "$SERVICE_USER" && say "$SERVICE_USER is in plugdev (the USB rule and $APEX_RULE use it)"
  else
    say "user $SERVICE_USER does not exist yet: install.sh adds it to plugdev"
  fi

  step 5/5 "udev"
  if command -v udevadm >/dev/null 2>&1 && [ -d /run/udev ]; then
    udevadm control --reload-rules && udevadm trigger
    say "udev rules reloaded: unplug and replug a USB Accelerator that was already connected"
  else
    say "udev is not running here: the rules apply at the next boot"
  fi
}

main "$@" </dev/null
