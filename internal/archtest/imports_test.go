// Package archtest enforces the direction of imports between Berth's
// packages (see docs/design.md): the guest side never links host code, and
// low-level packages never learn about containers or containerd.
package archtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/berth-runtime/berth/"

// forbidden maps a package to import-path prefixes it must not depend on,
// directly or indirectly.
var forbidden = map[string][]string{
	"internal/agent": {module + "internal/sandbox", module + "internal/shim", module + "internal/qemu",
		module + "internal/config", module + "internal/hostcheck", "github.com/containerd/containerd/"},
	"cmd/berth-agent":    {module + "internal/sandbox", module + "internal/shim", module + "internal/qemu", module + "internal/config"},
	"internal/qemu":      {"github.com/opencontainers/runtime-spec", "github.com/containerd/containerd", module + "internal/oci", module + "internal/sandbox", module + "internal/device"},
	"internal/transport": {module + "api/", "github.com/containerd/containerd"},
	"internal/config":    {"github.com/containerd/containerd", module + "internal/qemu", module + "internal/sandbox"},
	"internal/stats":     {module + "internal/sandbox", module + "internal/shim", module + "internal/cgroup"},
	// The host cgroup package knows pids, paths and limits: not VMs,
	// containers, the configuration or containerd.
	"internal/cgroup": {module + "internal/sandbox", module + "internal/shim", module + "internal/qemu",
		module + "internal/config", module + "internal/oci", "github.com/containerd/containerd"},
	"internal/monitor": {module + "internal/sandbox", module + "internal/shim", module + "internal/qemu"},
	// The pod network package knows netns and netlink, not VMs or pods.
	"internal/network": {module + "internal/", "github.com/opencontainers/runtime-spec", "github.com/containerd/containerd"},
	// The sandbox reaches its hypervisor only through internal/vmm: the
	// driver is injected (internal/vmm/drivers), so a second driver or a
	// fake needs no edit here.
	"internal/sandbox": {"github.com/containerd/containerd/", module + "internal/shim", module + "internal/qemu"},
	// The driver seam is neutral: no driver, no sandbox, no containerd.
	"internal/vmm": {module + "internal/qemu", module + "internal/sandbox", module + "internal/shim",
		module + "internal/config", "github.com/containerd/containerd"},
	"internal/oci": {module + "internal/"},
	// The host mount tree knows paths and mounts: not sandboxes, specs
	// or containerd.
	"internal/hostmount": {module + "internal/", "github.com/containerd/", "github.com/opencontainers/"},
	// The device model knows PCI topology, not how QEMU spells it: the
	// sandbox translates, the qemu package speaks QMP.
	"internal/device": {module + "internal/qemu", module + "internal/sandbox", module + "internal/shim",
		module + "internal/config", "github.com/containerd/"},
}

// qemuSyntax are spellings that only QEMU's command line or QMP use.
var qemuSyntax = []string{`"-device"`, "pcie-root-port", "pcie-pci-bridge", "x3130-upstream", "xio3130-downstream",
	"virtio-blk-pci", "blockdev-add", "device_add", "device_del", "DEVICE_DELETED", "host_device"}

// TestDeviceKnowsNoQEMUSyntax keeps QEMU's flag and QMP syntax out of
// internal/device, which an import rule alone cannot: strings need no
// import.
func TestDeviceKnowsNoQEMUSyntax(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "device", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no internal/device sources: %v", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range qemuSyntax {
			if strings.Contains(string(b), s) {
				t.Errorf("%s mentions %s: QEMU syntax belongs in internal/qemu", f, s)
			}
		}
	}
}

func TestImportDirection(t *testing.T) {
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", module+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if strings.HasPrefix(dep, b) && dep != module+pkg {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
