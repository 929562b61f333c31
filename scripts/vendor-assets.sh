#!/usr/bin/env bash
# Reproduce the dashboard's vendored front-end assets from the npm registry.
# The dashboard never loads anything from a CDN: the built files are committed under
# hub/web/static/vendor/ and this script is how they got there.
#
# Usage: scripts/vendor-assets.sh            (needs npm; writes hub/web/static/vendor/)
# Exit codes: 0 ok, 1 npm missing or a download/extract failed.
set -euo pipefail

UPLOT_VERSION="${UPLOT_VERSION:-1.6.32}"
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/hub/web/static/vendor"
command -v npm >/dev/null || { echo "vendor-assets: npm not found on PATH" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "vendor-assets: fetching uplot@$UPLOT_VERSION from the npm registry"
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null)
tar -xzf "$work"/uplot-*.tgz -C "$work"
mkdir -p "$dest"
cp "$work/package/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
cp "$work/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$work/package/LICENSE" "$dest/uPlot.LICENSE"
echo "uplot@$UPLOT_VERSION (MIT) from https://registry.npmjs.org/uplot" > "$dest/VERSIONS"
(cd "$dest" && sha256sum uPlot.iife.min.js uPlot.min.css uPlot.LICENSE >> VERSIONS)
echo "vendor-assets: wrote $dest"
