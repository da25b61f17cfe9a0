package guest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// These tests use the host's apt (BERTH_TEST_APT=1) and QEMU
// (BERTH_TEST_BOOT=1). Downloads are kept in BERTH_TEST_CACHE (default
// $TMPDIR/berth-test-cache) so reruns do not fetch the kernel again.

func requireEnv(t *testing.T, name, why string) {
	t.Helper()
	if os.Getenv(name) != "1" {
		t.Skipf("set %s=1 to run: %s", name, why)
	}
}

func testCacheDir() string {
	if d := os.Getenv("BERTH_TEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "berth-test-cache")
}

// TestBuildApt builds a guest image from the real Debian kernel package
// with a placeholder agent, and checks the rebuild is a no-op.
func TestBuildApt(t *testing.T) {
	requireEnv(t, "BERTH_TEST_APT", "downloads linux-image-cloud-amd64 with apt-get")
	agent := filepath.Join(t.TempDir(), "berth-agent")
	writeStaticAgent(t, agent, "placeholder")
	var progress bytes.Buffer
	o := BuildOptions{OutDir: filepath.Join(t.TempDir(), "guest"), CacheDir: testCacheDir(), AgentBinary: agent, Progress: &progress}
	start := time.Now()
	a, err := Build(context.Background(), o)
	if err != nil {
		t.Fatalf("Build: %v\n%s", err, progress.String())
	}
	t.Logf("build took %s:\n%s", time.Since(start), progress.String())
	for _, m := range []string{"virtio_pci", "virtio_mmio", "virtio_console", "virtio_blk", "virtio_mem", "virtiofs", "fuse", "overlay", "vsock", "vmw_vsock_virtio_transport"} {
		found := false
		for _, got := range a.Modules {
			found = found || got == m
		}
		if !found {
			t.Errorf("module %s not in %v", m, a.Modules)
		}
	}
	cfg, err := os.ReadFile(a.Config)
	if err != nil || !strings.Contains(string(cfg), "CONFIG_MEMORY_HOTPLUG=y") {
		t.Errorf("config: %v (CONFIG_MEMORY_HOTPLUG=y expected)", err)
	}

	progress.Reset()
	start = time.Now()
	if _, err := Build(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(progress.String(), "up to date") {
		t.Errorf("rebuild was not a no-op:\n%s", progress.String())
	}
	t.Logf("rebuild took %s", time.Since(start))
}

// TestBootLoadsModules boots the real kernel under QEMU (TCG) with
// testdata/kmodinit as /init and checks that every module loads and the
// virtio-serial agent port appears.
func TestBootLoadsModules(t *testing.T) {
	requireEnv(t, "BERTH_TEST_BOOT", "downloads the kernel with apt-get and boots it under qemu-system-x86_64")
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	initBin := filepath.Join(dir, "kmodinit")
	build := exec.Command("go", "build", "-trimpath", "-o", initBin, "./testdata/kmodinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kmodinit: %v\n%s", err, out)
	}
	var progress bytes.Buffer
	// BERTH_TEST_KERNEL_SOURCE=berth boots Berth's own kernel instead
	// (compiled into BERTH_TEST_CACHE unless a build is cached there):
	// nothing to load, the same devices must appear.
	a, err := Build(context.Background(), BuildOptions{OutDir: filepath.Join(dir, "guest"), CacheDir: testCacheDir(), AgentBinary: initBin, Progress: &progress,
		KernelSource: os.Getenv("BERTH_TEST_KERNEL_SOURCE")})
	if err != nil {
		t.Fatalf("Build: %v\n%s", err, progress.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sock := filepath.Join(dir, "agent.sock")
	cmd := exec.CommandContext(ctx, qemu,
		"-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", a.Kernel, "-initrd", a.Initrd, "-append", "console=ttyS0 panic=-1 virtio-pci.force_legacy=1",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=c0,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=c0,name=berth.agent")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("qemu ran %s", time.Since(start))
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "kmodinit:") || strings.Contains(l, "Kernel panic") || strings.Contains(l, "Unknown symbol") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	t.Logf("console:\n%s", strings.Join(lines, "\n"))
	if err != nil {
		t.Fatalf("qemu: %v\n%s", err, out)
	}
	log := string(out)
	if !strings.Contains(log, "kmodinit: OK") {
		t.Fatalf("guest did not report OK:\n%s", log)
	}
	if !regexp.MustCompile(`kmodinit: port vport\d+p1 name=berth\.agent /dev/vport\d+p1 present=true`).MatchString(log) {
		t.Errorf("agent port not seen in the guest:\n%s", strings.Join(lines, "\n"))
	}
	if !strings.Contains(log, "kmodinit: param virtio-pci.force_legacy=Y") {
		t.Error("virtio_pci did not get force_legacy=1 from the kernel command line")
	}
	if strings.Contains(log, "unable to open an initial console") {
		t.Error("kernel could not open /dev/console from the initramfs")
	}
}
