package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIDebugContainerSeesItsTargetsProcesses: `kubectl debug --target=app`
// adds an ephemeral container that joins the app container's PID
// namespace (CRI NamespaceMode_TARGET), so that it sees, and can trace, the
// app's processes, as under runc. containerd names the target's namespace
// by the target task's pid, and every task of a Berth pod reports the VM's
// pid, so the path alone cannot say which container it is: the debug
// container used to join the pause container's namespace and saw nothing
// of the app.
func TestCRIDebugContainerSeesItsTargetsProcesses(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	for _, handler := range []string{"runc", criHandler} {
		pod := c.runPodWith(t, "debug-target-"+handler, handler, nil)
		app, _ := c.createContainer(t, pod, "app", "sleep", "31337")
		c.startContainer(t, app)
		dbg, _ := c.createContainerWith(t, pod, "debugger", func(cc *cri.ContainerConfig) {
			ns := *pod.config.Linux.SecurityContext.NamespaceOptions
			ns.Pid, ns.TargetId = cri.NamespaceMode_TARGET, app
			cc.Linux.SecurityContext.NamespaceOptions = &ns
		}, "sh", "-c", "echo sees $(ps -o args | grep -c '^sleep 31337')")
		c.startContainer(t, dbg)
		got := waitLogLine(t, filepath.Join(pod.logDir, "debugger.log"), "", time.Minute)
		c.removePod(t, pod.id)
		if !strings.HasPrefix(got, "sees ") || got != "sees 1" {
			t.Errorf("%s: the debug container's view of the target's processes: %q, want %q", handler, got, "sees 1")
		}
	}
}
