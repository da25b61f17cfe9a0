package oci

import (
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// CgroupsPath is the spec's linux.cgroupsPath when someone chose it, ""
// otherwise. containerd's client fills in "/<namespace>/<id>" for every
// container whose creator asked for nothing (`ctr run` without --cgroup,
// oci.WithDefaultSpec); that is a placeholder, not a placement, and Berth
// puts such a sandbox below its own cgroup.parent instead. CRI's paths
// (below the kubelet's pod cgroup, or systemd's "<slice>:<prefix>:<id>")
// and an explicit `ctr run --cgroup` are used.
func CgroupsPath(spec *specs.Spec, namespace, id string) string {
	if spec == nil || spec.Linux == nil {
		return ""
	}
	p := spec.Linux.CgroupsPath
	if p == path.Join("/", namespace, id) {
		return ""
	}
	return p
}
