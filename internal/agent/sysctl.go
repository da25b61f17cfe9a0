package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The pod's network namespace in the guest is the guest's own: the host
// connected the VM's NICs to the pod network, and the sandbox container
// runs in the agent's network namespace (every app container joins it).
// libcontainer refuses net.* sysctls for a container that shares the
// namespace of its caller ("not allowed in host network namespace"), a
// rule meant for runc on a host, where that namespace is the node's. CRI
// sets such sysctls on every pod (containerd 2.x:
// net.ipv4.ip_unprivileged_port_start=0). Here the namespace is the pod's
// alone, so the agent applies them to it itself and hands libcontainer a
// spec without them.

// sharesAgentNetNS reports whether a container of spec runs in the
// agent's network namespace: no network namespace of its own, or one
// joined by a path that is the agent's.
func sharesAgentNetNS(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return true
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			continue
		}
		if ns.Path == "" {
			return false
		}
		joined, err1 := os.Stat(ns.Path)
		own, err2 := os.Stat("/proc/self/ns/net")
		return err1 == nil && err2 == nil && os.SameFile(joined, own)
	}
	return true
}

// applyPodNetSysctls writes the spec's net.* sysctls under procSys (the
// guest's /proc/sys) and removes them from the spec. Only well-formed
// net.* keys are accepted: the key becomes a path.
func applyPodNetSysctls(procSys string, spec *specs.Spec) error {
	if spec.Linux == nil || len(spec.Linux.Sysctl) == 0 {
		return nil
	}
	for key, value := range spec.Linux.Sysctl {
		if !strings.HasPrefix(key, "net.") {
			continue
		}
		rel := strings.ReplaceAll(key, ".", "/")
		if !filepath.IsLocal(rel) || strings.Contains(key, "..") || strings.ContainsAny(key, "\x00 ") {
			return fmt.Errorf("sysctl %q is not a valid name: %w", key, errdefs.ErrInvalidArgument)
		}
		if err := os.WriteFile(filepath.Join(procSys, rel), []byte(value), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s in the pod's network namespace: %w", key, value, err)
		}
		delete(spec.Linux.Sysctl, key)
	}
	return nil
}
