package sandbox

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestPodNetNS(t *testing.T) {
	withNS := func(path string, ann map[string]string) *specs.Spec {
		return &specs.Spec{Annotations: ann, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: path}}}}
	}
	cri := map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "p"}
	if p, err := PodNetNS(withNS("/var/run/netns/cni-1", cri)); err != nil || p != "/var/run/netns/cni-1" {
		t.Errorf("CRI pod: %q %v", p, err)
	}
	// ctr run: a new namespace inside the guest, no NIC.
	if p, err := PodNetNS(withNS("", nil)); err != nil || p != "" {
		t.Errorf("ctr run: %q %v", p, err)
	}
	// hostNetwork: containerd leaves the network namespace out.
	hostNet := &specs.Spec{Annotations: cri, Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}
	_, err := PodNetNS(hostNet)
	if !errors.Is(err, ErrHostNetwork) || !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "cannot share the host's network namespace") {
		t.Errorf("hostNetwork pod: %v", err)
	}
}
