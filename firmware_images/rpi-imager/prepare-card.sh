#!/bin/sh
# Put edgefleet's first boot on a Raspberry Pi OS Bookworm card that Raspberry Pi Imager has just
# written (run on your computer, with the card's boot partition mounted):
#
#   sh prepare-card.sh /media/$USER/bootfs --hub https://HUB --token TOKEN [--coral std|max]
#
# Copies edgefleet-firstrun.sh, edgefleet-firstboot.service and edgefleet.env (the hub URL and the
# one-time token) to the boot partition, then hooks the first boot: into Imager's firstrun.sh
# when you used Imager's settings (user, Wi-Fi, SSH: it runs once, as root, at first boot), else
# as a `systemd.run=` on cmdline.txt. Rerun-safe. The token sits on the FAT partition, readable by
# anyone holding the card, until first boot moves it; it is single-use and expires.
# Exit codes: 0 done; 1 a step failed (named); 2 bad arguments.
set -eu

say() { printf '%s\n' "prepare-card: $*"; }
die() {
  printf '%s\n' "prepare-card: FAILED: $*" >&2
  exit 1
}
usage() {
  say "usage: prepare-card.sh BOOT_PARTITION --hub URL --token TOKEN [--coral std|max]" >&2
  exit 2
}

# the line added to Imager's firstrun.sh: $0 expands there, on the device, to firstrun.sh's path
# shellcheck disable=SC2016
HOOK='sh "$(dirname "$0")/edgefleet-firstrun.sh"  # edgefleet: install and enroll at first boot'
RUN=" systemd.run=/boot/firmware/edgefleet-firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target"

main() {
  [ "$#" -ge 1 ] || usage
  boot="${1%/}"
  shift
  hub="" token="" args=""
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --hub) [ "$#" -ge 2 ] || usage; hub="${2%/}"; shift 2 ;;
      --token) [ "$#" -ge 2 ] || usage; token="$2"; shift 2 ;;
      --coral) [ "$#" -ge 2 ] || usage; args="--coral $2"; shift 2 ;;
      *) say "unknown argument: $1" >&2; usage ;;
    esac
  done
  if [ -z "$hub" ] || [ -z "$token" ]; then usage; fi
  case "$hub" in http://* | https://*) ;; *) die "--hub expects an http(s):// URL, got '$hub'" ;; esac
  [ -f "$boot/cmdline.txt" ] || die "$boot has no cmdline.txt: is it the card's boot partition (bootfs)?"
  here="$(cd "$(dirname "$0")" && pwd)"
  cp "$here/edgefleet-firstrun.sh" "$here/edgefleet-firstboot.service" "$boot/"
  printf 'EDGEFLEET_HUB=%s\nEDGEFLEET_TOKEN=%s\nEDGEFLEET_INSTALL_ARGS="%s"\n' "$hub" "$token" "$args" >"$boot/edgefleet.env"
  say "copied edgefleet-firstrun.sh, edgefleet-firstboot.service, edgefleet.env to $boot"
  if [ -f "$boot/firstrun.sh" ]; then
    if grep -qF "edgefleet-firstrun.sh" "$boot/firstrun.sh"; then
      say "Imager's firstrun.sh already calls edgefleet-firstrun.sh"
    else
      # before Imager's own clean-up (it deletes firstrun.sh and its cmdline.txt entry)
      grep -q '^rm -f /boot.*/firstrun.sh' "$boot/firstrun.sh" \
        || die "$boot/firstrun.sh has no 'rm -f /boot/.../firstrun.sh' line: not Imager's script as known"
      awk -v hook="$HOOK" '!done && /^rm -f \/boot.*\/firstrun.sh/ { print hook; done = 1 } { print }' \
        "$boot/firstrun.sh" >"$boot/firstrun.sh.new"
      mv "$boot/firstrun.sh.new" "$boot/firstrun.sh"
      say "hooked into Imager's firstrun.sh"
    fi
  elif grep -qF "edgefleet-firstrun.sh" "$boot/cmdline.txt"; then
    say "cmdline.txt already runs edgefleet-firstrun.sh"
  elif grep -q "systemd.run=" "$boot/cmdline.txt"; then
    die "cmdline.txt already has another systemd.run= and there is no firstrun.sh to hook into"
  else
    line="$(head -n 1 "$boot/cmdline.txt")"
    printf '%s%s\n' "$line" "$RUN" >"$boot/cmdline.txt"
    say "cmdline.txt runs edgefleet-firstrun.sh at first boot (it removes that again)"
  fi
  say "done: eject the card and boot the device; progress: journalctl -u edgefleet-firstboot"
}

main "$@"
