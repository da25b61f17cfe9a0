package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIHostPIDAndHostIPCRefused: a VM cannot share the node's PID or
// IPC namespace; such pods are refused with an error naming the pod
// field, before any VM boots (they used to get the VM's namespaces
// silently).
func TestCRIHostPIDAndHostIPCRefused(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	for _, tc := range []struct {
		field string
		ns    *cri.NamespaceOption
	}{
		{"hostPID", &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_NODE, Ipc: cri.NamespaceMode_POD}},
		{"hostIPC", &cri.NamespaceOption{Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_NODE}},
	} {
		uid := fmt.Sprintf("%s-%d", strings.ToLower(tc.field), time.Now().UnixNano())
		config := &cri.PodSandboxConfig{
			Metadata:     &cri.PodSandboxMetadata{Name: strings.ToLower(tc.field), Uid: uid, Namespace: "berth-e2e"},
			LogDirectory: t.TempDir(),
			Linux: &cri.LinuxPodSandboxConfig{
				CgroupParent:    "/kubepods/besteffort/pod" + uid,
				SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: tc.ns},
			},
		}
		start := time.Now()
		resp, err := c.rt.RunPodSandbox(criCtx(t, 2*time.Minute), &cri.RunPodSandboxRequest{Config: config, RuntimeHandler: criHandler})
		if err == nil {
			c.removePod(t, resp.PodSandboxId)
			t.Errorf("%s pod started", tc.field)
			continue
		}
		if !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), "runc runtime class") {
			t.Errorf("%s pod: %v; want an error naming %s and the way out", tc.field, err, tc.field)
		}
		t.Logf("%s refused in %v: %v", tc.field, time.Since(start), err)
		// CRI keeps nothing of a failed RunPodSandbox; make sure.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		list, _ := c.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{LabelSelector: map[string]string{}}})
		cancel()
		for _, p := range list.GetItems() {
			if p.Metadata.GetUid() == uid {
				c.removePod(t, p.Id)
			}
		}
	}
	if p := qemuPids(); len(p) > 0 {
		t.Errorf("a VM was started for a refused pod: %v", p)
	}
}
