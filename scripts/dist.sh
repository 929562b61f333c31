#!/bin/sh
# `make dist`: what a hub serves to devices (EDGEFLEET_HUB_DIST=DIR, GET /install.sh and /dist/NAME) and what
# an offline install copies to a device: the wheel, the installer, the Coral setup, the unit.
#   scripts/dist.sh [OUT]   (default: dist/; PY picks the interpreter, default .venv/bin/python)
set -eu
cd "$(dirname "$0")/.."
OUT="${1:-dist}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"
rm -f "$OUT"/edgefleet-*.whl
# --no-build-isolation: setuptools from the venv, so building needs no network
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$OUT" .
cp firmware_images/install.sh firmware_images/coral-setup.sh firmware_images/edgefleet-agent.service "$OUT"/
# for the operator: first boot without a keyboard (cloud-init, Raspberry Pi Imager)
cp -R firmware_images/cloud-init firmware_images/rpi-imager "$OUT"/
ls "$OUT"/edgefleet-*-py3-none-any.whl
