#!/bin/sh
# edgefleet first boot for Raspberry Pi OS Bookworm images (no cloud-init), two modes:
#
#   edgefleet-firstrun.sh [--root DIR]   setup, at the very first boot, before the network: run
#       from the boot partition by Imager's firstrun.sh or by `systemd.run=` (prepare-card.sh
#       arranges one of the two). Installs edgefleet-firstboot.service and this script as
#       /usr/local/sbin/edgefleet-firstboot, moves edgefleet.env (hub URL and one-time token) off
#       the FAT boot partition to /etc/edgefleet/firstboot.env (0600), removes its own
#       `systemd.run=` from cmdline.txt. --root DIR writes into DIR instead of / (tests).
#   edgefleet-firstboot --install         run by edgefleet-firstboot.service once the network is
#       up: fetches install.sh from the hub and runs it with the token (the same command as
#       cloud-init/user-data); on success removes the token file, so it never runs again.
#
# Exit codes: 0 done; 1 a step failed (named); 2 bad arguments.
set -eu

UNIT=edgefleet-firstboot.service
ENV_FILE=/etc/edgefleet/firstboot.env

say() { printf '%s\n' "edgefleet-firstrun: $*"; }
die() {
  printf '%s\n' "edgefleet-firstrun: FAILED: $*" >&2
  exit 1
}

setup() {
  root="$1"
  here="$(cd "$(dirname "$0")" && pwd)"
  [ -f "$here/$UNIT" ] || die "$here/$UNIT is missing (copy the whole rpi-imager folder to the boot partition)"
  [ -f "$here/edgefleet.env" ] || die "$here/edgefleet.env is missing (prepare-card.sh writes it)"
  say "installing $UNIT and /usr/local/sbin/edgefleet-firstboot"
  mkdir -p "$root/usr/local/sbin" "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/edgefleet"
  cp "$here/edgefleet-firstrun.sh" "$root/usr/local/sbin/edgefleet-firstboot"
  chmod 0755 "$root/usr/local/sbin/edgefleet-firstboot"
  cp "$here/$UNIT" "$root/etc/systemd/system/$UNIT"
  chmod 0644 "$root/etc/systemd/system/$UNIT"
  ln -sf "/etc/systemd/system/$UNIT" "$root/etc/systemd/system/multi-user.target.wants/$UNIT"
  say "moving the token off the boot partition to $ENV_FILE (0600)"
  (umask 077 && cp "$here/edgefleet.env" "$root$ENV_FILE")
  chmod 0600 "$root$ENV_FILE"
  rm -f "$here/edgefleet.env"
  if [ -f "$here/cmdline.txt" ] && grep -q "systemd.run=[^ ]*edgefleet-firstrun.sh" "$here/cmdline.txt"; then
    say "removing edgefleet's systemd.run= from $here/cmdline.txt"
    sed 's| systemd.run=[^ ]*edgefleet-firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target||' \
      "$here/cmdline.txt" >"$here/cmdline.txt.new"
    mv "$here/cmdline.txt.new" "$here/cmdline.txt"
  fi
  say "done: $UNIT installs and enrolls the agent once the network is up"
}

install_agent() {
  [ -f "$ENV_FILE" ] || die "$ENV_FILE is missing: nothing to do"
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  if [ -z "${EDGEFLEET_HUB:-}" ] || [ -z "${EDGEFLEET_TOKEN:-}" ]; then
    die "$ENV_FILE must set EDGEFLEET_HUB and EDGEFLEET_TOKEN"
  fi
  work="$(mktemp -d)"
  say "fetching $EDGEFLEET_HUB/install.sh"
  curl -fsSL --retry 10 --retry-delay 6 --retry-connrefused "$EDGEFLEET_HUB/install.sh" -o "$work/install.sh" \
    || die "cannot download $EDGEFLEET_HUB/install.sh (network up? hub reachable?)"
  # shellcheck disable=SC2086
  sh "$work/install.sh" --hub "$EDGEFLEET_HUB" --token "$EDGEFLEET_TOKEN" ${EDGEFLEET_INSTALL_ARGS:-} \
    || die "install.sh failed (its output above names the step); retrying in a minute"
  rm -rf "$work" "$ENV_FILE"
  say "installed and enrolled; $ENV_FILE removed, $UNIT will not run again"
}

main() {
  root=""
  mode=setup
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --install) mode=install; shift ;;
      --root) [ "$#" -ge 2 ] || { say "--root needs a directory" >&2; exit 2; }; root="${2%/}"; shift 2 ;;
      *) say "unknown argument: $1 (--install, --root DIR)" >&2; exit 2 ;;
    esac
  done
  [ "$(id -u)" = 0 ] || die "must run as root"
  if [ "$mode" = install ]; then install_agent; else setup "$root"; fi
}

main "$@" </dev/null
