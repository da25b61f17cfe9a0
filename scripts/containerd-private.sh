#!/usr/bin/env bash
# Starts or stops a private containerd for Berth's demo and tests, with its
# own root, state and socket under DIR, and Berth's runtime configured as
# handler "berth". It never touches a system containerd.
#   containerd-private.sh start DIR [BIN_DIR]   prints the socket path
#   containerd-private.sh stop DIR
set -euo pipefail
cmd=${1:?usage: containerd-private.sh start|stop DIR [BIN_DIR]}
dir=$(readlink -f "${2:?DIR missing}")
bindir=$(readlink -f "${3:-$(dirname "$0")/../bin}")
case "$cmd" in
start)
  command -v containerd >/dev/null || { echo "containerd missing: apt-get install containerd" >&2; exit 1; }
  mkdir -p "$dir"
  cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/berth-pause:latest"
  # CRI gives pause containers oom_score_adj -998; lowering a score needs
  # CAP_SYS_RESOURCE, which root lacks on some hosts (containers, these
  # test machines), and runc then fails with "can't get final child's PID
  # from pipe". Clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth]
      runtime_type = "io.containerd.berth.v2"
      pod_annotations = ["io.berth.*"]
      # Privileged pods must not get the host's disks (docs/containerd.md).
      privileged_without_host_devices = true
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
TOML
  PATH="$bindir:$PATH" nohup containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  echo $! > "$dir/containerd.pid"
  for _ in $(seq 100); do
    if [ -S "$dir/containerd.sock" ] && ctr --address "$dir/containerd.sock" version >/dev/null 2>&1; then
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
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
