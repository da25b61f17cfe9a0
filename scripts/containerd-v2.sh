#!/usr/bin/env bash
# Builds containerd 2.x (containerd + ctr) from the Go module proxy into a
# cache directory, for the e2e tests' containerd 2.x lane. Idempotent: a
# cache that already holds both binaries is used as is (the build takes
# minutes). Prints the bin directory on stdout.
#
#   scripts/containerd-v2.sh [version]     (default v2.4.2)
#   BERTH_CONTAINERD_CACHE=/dir            (default /var/cache/berth)
set -euo pipefail
version=${1:-v2.4.2}
cache=${BERTH_CONTAINERD_CACHE:-/var/cache/berth}
bin=$cache/containerd-$version/bin
if [ -x "$bin/containerd" ] && [ -x "$bin/ctr" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"
tmp=$(mktemp -d "$cache/.containerd-$version.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building containerd $version into $bin (takes a few minutes)" >&2
# A private GOBIN, then a rename: an interrupted build never leaves a
# half-written binary that the check above would take for a good one.
GOBIN=$tmp GOFLAGS=-mod=mod go install \
  "github.com/containerd/containerd/v2/cmd/containerd@$version" \
  "github.com/containerd/containerd/v2/cmd/ctr@$version" >&2
mv "$tmp/containerd" "$tmp/ctr" "$bin/"
echo "$bin"
