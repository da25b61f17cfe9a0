package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// machineConfig writes a copy of the test configuration with
// hypervisor.machine set, so a test can run on another machine type with
// the same run dir (and therefore the same leak checks).
func machineConfig(t *testing.T, machine string) string {
	t.Helper()
	return writeConfigVariant(t, "[hypervisor]\nmachine = \""+machine+"\"\n")
}

// TestRunMicroVM runs the basic scenario on microvm, whose devices are
// virtio-mmio found through ACPI rather than virtio-pci: a different path
// for the agent's serial port and for virtio-fs.
func TestRunMicroVM(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cfg := machineConfig(t, "microvm")
	// Not berthCmd: it names the default test configuration.
	cmd := exec.Command(env.berth, "--config", cfg, "run", "--rootfs", env.rootfs, "--",
		"/bin/sh", "-c", "echo hello; cat /bin/busybox >/dev/null && echo rootfs-read; exit 7")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		code = cmd.ProcessState.ExitCode()
		if code < 0 {
			t.Fatalf("berth run: %v", err)
		}
	}
	if code != 7 {
		t.Fatalf("exit code %d, want 7; stderr:\n%s", code, stderr.String())
	}
	// Reading a whole binary exercises virtio-fs over virtio-mmio beyond
	// the lookups needed to start sh.
	if got := stdout.String(); got != "hello\nrootfs-read\n" {
		t.Fatalf("stdout %q, want \"hello\\nrootfs-read\\n\"; stderr:\n%s", got, stderr.String())
	}
}
