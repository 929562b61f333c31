#!/usr/bin/env bash
# System packages the tests use: Debian's chromium (browser tests), mosquitto (real broker),
# docker-compose (validates docker-compose.yml without an engine), prometheus (promtool checks
# /metrics, deploy/prometheus; a real Prometheus scrapes hub, agent, cloud); for the device installer
# (tests/firmware_images): shellcheck, systemd-analyze, cloud-init (schema), mmdebstrap (a bookworm
# chroot). Installed only when missing
# and when we can (root + apt); tests that need a missing one skip with the reason.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v curl >/dev/null 2>&1 || need+=(curl)  # the README tour (tests/test_readme_tour.py)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)  # a 3-node broker cluster (tests/reliability/test_nats_cluster.py)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: missing ${need[*]} and cannot apt-get install them; those tests will skip" >&2
  exit 0
fi
echo "test-deps: installing ${need[*]}" >&2
apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
  || echo "test-deps: apt-get install ${need[*]} failed; those tests will skip" >&2
exit 0
