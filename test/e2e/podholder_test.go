package e2e

import (
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A CRI pod's sandbox runs no pause image in the guest: its process is
// the agent's namespace holder (internal/agent/podholder). Seen from an
// app container sharing the pod's PID namespace, it is PID 1, confined as
// the pause image would be (uid 65535, no capabilities, no_new_privs),
// and it set the pod's hostname and IPC sysctl in the namespaces the app
// containers joined.
func TestCRIPodSandboxIsAConfinedNamespaceHolder(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	config := podConfig(t, "holder-pod", nil)
	config.Linux.SecurityContext.NamespaceOptions.Pid = cri.NamespaceMode_POD
	config.Linux.Sysctls = map[string]string{"kernel.shmmni": "2048"}
	start := time.Now()
	pod := c.runPodConfig(t, config, criHandler)
	defer c.removePod(t, pod.id)
	t.Logf("RunPodSandbox took %v", time.Since(start))
	id, _ := c.createContainer(t, pod, "app", "sleep", "1000")
	c.startContainer(t, id)

	ex, err := c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id, Timeout: 30,
		Cmd: []string{"sh", "-c", "cat /proc/1/status; echo hostname=$(hostname); echo shmmni=$(cat /proc/sys/kernel/shmmni)"}})
	if err != nil || ex.ExitCode != 0 {
		t.Fatalf("ExecSync: %v %+v", err, ex)
	}
	out := string(ex.Stdout)
	for _, want := range []string{
		"Name:\tberth-holder",
		"Uid:\t65535\t65535\t65535\t65535", "Gid:\t65535\t65535\t65535\t65535",
		"CapPrm:\t0000000000000000", "CapEff:\t0000000000000000", "NoNewPrivs:\t1",
		"hostname=holder-pod", "shmmni=2048",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the app container's view of the pod lacks %q:\n%s", want, out)
		}
	}
}

// A pod whose sandbox has a seccomp profile keeps its pause image, run
// by runc with the profile applied: the holder could not apply it, and a
// profile is never dropped.
func TestCRIPodSandboxWithSeccompRunsItsPauseImage(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	config := podConfig(t, "seccomp-pod", nil)
	config.Linux.SecurityContext.NamespaceOptions.Pid = cri.NamespaceMode_POD
	config.Linux.SecurityContext.Seccomp = &cri.SecurityProfile{ProfileType: cri.SecurityProfile_RuntimeDefault}
	pod := c.runPodConfig(t, config, criHandler)
	defer c.removePod(t, pod.id)
	id, _ := c.createContainer(t, pod, "app", "sleep", "1000")
	c.startContainer(t, id)
	ex, err := c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id, Timeout: 30,
		Cmd: []string{"sh", "-c", "grep -E '^(Name|Seccomp):' /proc/1/status"}})
	if err != nil || ex.ExitCode != 0 {
		t.Fatalf("ExecSync: %v %+v", err, ex)
	}
	// The test pause image runs busybox's sleep.
	if out := string(ex.Stdout); !strings.Contains(out, "Name:\tsleep") || !strings.Contains(out, "Seccomp:\t2") {
		t.Errorf("PID 1 of a pod with a seccomp profile:\n%s\nwant the pause image's sleep under seccomp", out)
	}
}
