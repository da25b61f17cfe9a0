#!/usr/bin/env bash
# Starts or stops a private containerd for Berth's demo and tests, with its
# own root, state and socket under DIR, and Berth's runtime configured as
# handler "berth". It never touches a system containerd.
# CRI pods get their network from Debian's CNI plugins (bridge, host-local,
# portmap), dual-stack as in a cluster: a private bridge, a private 10.x /24
# and a private fd00:be:x:y::/64, all derived from DIR so that several
# private containerds on one machine do not collide; the bridge is removed
# by stop.
#   containerd-private.sh start DIR [BIN_DIR]   prints the socket path
#   containerd-private.sh stop DIR
# BERTH_CONTAINERD=/path/to/containerd picks the binary (default: the one on
# PATH, Debian's 1.6); its version picks the configuration format (version
# 2 for 1.x, version 3 for 2.x). The configuration written is the one
# docs/containerd.md shows.
set -euo pipefail
cmd=${1:?usage: containerd-private.sh start|stop DIR [BIN_DIR]}
dir=$(readlink -f "${2:?DIR missing}")
bindir=$(readlink -f "${3:-$(dirname "$0")/../bin}")
# cni_net DIR prints the bridge name, the IPv4 subnet and gateway, and the
# IPv6 subnet and gateway for DIR.
cni_net() {
  local h
  h=$(printf %s "$1" | sha256sum | cut -c1-6)
  echo "berth$h 10.$((128 + 0x${h:0:2} % 100)).$((0x${h:2:2})).0/24 10.$((128 + 0x${h:0:2} % 100)).$((0x${h:2:2})).1 fd00:be:${h:0:4}:${h:4:2}::/64 fd00:be:${h:0:4}:${h:4:2}::1"
}
case "$cmd" in
start)
  containerd=${BERTH_CONTAINERD:-$(command -v containerd || true)}
  [ -x "$containerd" ] || { echo "containerd missing: apt-get install containerd (or set BERTH_CONTAINERD)" >&2; exit 1; }
  ctr=$(dirname "$containerd")/ctr
  [ -x "$ctr" ] || ctr=ctr
  mkdir -p "$dir"
  read -r br subnet gw subnet6 gw6 < <(cni_net "$dir")
  mkdir -p "$dir/cni/net.d"
  cat > "$dir/cni/net.d/10-berth.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "berth-private",
  "plugins": [
    {"type": "bridge", "bridge": "$br", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$subnet", "gateway": "$gw"}], [{"subnet": "$subnet6", "gateway": "$gw6"}]],
              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}], "dataDir": "$dir/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # Extra runtime handlers, each a Berth configuration file passed to the
  # shim as the runtime's ConfigPath option: "name=/path name2=/path2".
  extra=()
  for h in ${BERTH_RUNTIME_CONFIGS:-}; do extra+=("$h"); done
  case "$("$containerd" --version)" in
  *" v1."*|*" 1."*)
    # containerd 1.6/1.7: configuration version 2.
    cri='plugins."io.containerd.grpc.v1.cri"'
    cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[$cri]
  sandbox_image = "docker.io/library/berth-pause:latest"
  # CRI gives pause containers oom_score_adj -998; lowering a score needs
  # CAP_SYS_RESOURCE, which root lacks on some hosts (containers, these
  # test machines), and runc then fails with "can't get final child's PID
  # from pipe". Clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [$cri.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
  [$cri.containerd]
    snapshotter = "overlayfs"
    [$cri.containerd.runtimes.berth]
      runtime_type = "io.containerd.berth.v2"
      pod_annotations = ["io.berth.*"]
      # Privileged pods must not get the host's disks (docs/containerd.md).
      privileged_without_host_devices = true
    [$cri.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
TOML
    rt="$cri.containerd.runtimes" major=1
    ;;
  *)
    # containerd 2.x: configuration version 3 (2.0 and later read it;
    # 2.4 migrates it to its own version 4 on load). The CRI plugin is
    # split: images (snapshotter, the pause image) and runtime.
    cat > "$dir/config.toml" <<TOML
version = 3
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "docker.io/library/berth-pause:latest"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni/net.d"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.berth]
      runtime_type = "io.containerd.berth.v2"
      pod_annotations = ["io.berth.*"]
      # Privileged pods must not get the host's disks (docs/containerd.md).
      privileged_without_host_devices = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
TOML
    rt="plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes" major=2
    ;;
  esac
  if [ -n "${BERTH_SHIM_SANDBOXER_HANDLER:-}" ] && [ "$major" = 2 ]; then
    # containerd 2.x only: a handler using the Sandbox API, which Berth
    # refuses (docs/containerd.md); the tests check the refusal.
    cat >> "$dir/config.toml" <<TOML
[$rt.$BERTH_SHIM_SANDBOXER_HANDLER]
  runtime_type = "io.containerd.berth.v2"
  sandboxer = "shim"
TOML
  fi
  for h in "${extra[@]}"; do
    cat >> "$dir/config.toml" <<TOML
[$rt.${h%%=*}]
  runtime_type = "io.containerd.berth.v2"
  pod_annotations = ["io.berth.*"]
  [$rt.${h%%=*}.options]
    ConfigPath = "${h#*=}"
TOML
  done
  PATH="$bindir:$PATH" nohup "$containerd" --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  echo $! > "$dir/containerd.pid"
  for _ in $(seq 100); do
    if [ -S "$dir/containerd.sock" ] && "$ctr" --address "$dir/containerd.sock" version >/dev/null 2>&1; then
      echo "$dir/containerd.sock"; exit 0
    fi
    sleep 0.1
  done
  echo "containerd did not start; log:" >&2; tail -20 "$dir/containerd.log" >&2; exit 1
  ;;
stop)
  if [ -f "$dir/containerd.pid" ]; then
    pid=$(cat "$dir/containerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/containerd.pid"
  fi
  read -r br _ < <(cni_net "$dir")
  ip link del "$br" 2>/dev/null || true
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
