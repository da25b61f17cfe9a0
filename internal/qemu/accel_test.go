package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeKVM points kvmDevice at an openable file for the duration of a test,
// so the fake-QEMU tests run the same on hosts with and without /dev/kvm.
func fakeKVM(t *testing.T) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	old := kvmDevice
	kvmDevice = f
	t.Cleanup(func() { kvmDevice = old })
}

// fakeQEMU writes a shell script standing in for QEMU. It records its pid
// so tests can check the probe killed it.
func fakeQEMU(t *testing.T, body string) (bin, pidFile string) {
	t.Helper()
	dir := t.TempDir()
	bin = filepath.Join(dir, "qemu-system-x86_64")
	pidFile = filepath.Join(dir, "pid")
	script := "#!/bin/sh\necho $$ > " + pidFile + "\necho run >> " + filepath.Join(dir, "runs") + "\n" + body + "\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, pidFile
}

func runs(bin string) int {
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(bin), "runs"))
	return strings.Count(string(b), "run\n")
}

func assertProbeReaped(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("fake qemu never ran: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("probe process %d still exists (kill 0: %v)", pid, err)
	}
}

func TestDetectAccelVerdicts(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)

	tests := []struct {
		name      string
		script    string
		kernel    string
		want      Accel
		reason    []string
		maxTimeMs int
	}{
		{
			name:   "kernel banner means KVM",
			script: `echo "Probing EDD (edd=off to disable)... ok"; echo "[    0.000000] Linux version 6.1.0"; exec sleep 30`,
			kernel: kernel,
			want:   KVM,
			reason: []string{"KVM works", `"Linux version"`},
		},
		{
			name:   "firmware banner means KVM without a kernel",
			script: `echo "SeaBIOS (version 1.16.2-debian-1.16.2-1)"; exec sleep 30`,
			want:   KVM,
			reason: []string{"KVM works: the firmware printed \"SeaBIOS\""},
		},
		{
			name:   "missing kernel falls back to the firmware probe",
			script: `echo "SeaBIOS (version 1.16.2)"; exec sleep 30`,
			kernel: "/nonexistent/vmlinuz",
			want:   KVM,
			reason: []string{"firmware"},
		},
		{
			name: "KVM internal error while QEMU stays up",
			script: `echo "KVM internal error. Suberror: 1" >&2; echo "extra data[0]: 0x0000000000000000" >&2
				echo "EAX=00000000 EBX=00000000" >&2; exec sleep 30`,
			kernel:    kernel,
			want:      TCG,
			reason:    []string{"KVM failed: KVM internal error. Suberror: 1; using TCG"},
			maxTimeMs: 2000,
		},
		{
			name: "QEMU aborts",
			script: `echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2
				echo "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed." >&2
				kill -ABRT $$`,
			kernel: kernel,
			want:   TCG,
			reason: []string{"KVM failed: the test kernel printed nothing before qemu was killed by signal 6 (aborted): qemu-system-x86_64: error: failed to set MSR 0x10a", "; using TCG"},
		},
		{
			name:   "QEMU exits with an error",
			script: `echo "qemu-system-x86_64: -accel kvm: Could not access KVM kernel module: Permission denied" >&2; exit 1`,
			want:   TCG,
			reason: []string{"KVM failed: the firmware printed nothing before qemu exited with status 1: qemu-system-x86_64: -accel kvm: Could not access KVM kernel module"},
		},
		{
			name:   "banner then exit still counts as progress",
			script: `echo "Linux version 6.1"; exit 0`,
			kernel: kernel,
			want:   KVM,
		},
		{
			name:      "silence means the guest hangs",
			script:    `echo "Probing EDD (edd=off to disable)... ok"; exec sleep 30`,
			kernel:    kernel,
			want:      TCG,
			reason:    []string{"KVM failed: the test kernel printed nothing under KVM within 300ms; using TCG"},
			maxTimeMs: 2000,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fakeKVM(t)
			bin, pidFile := fakeQEMU(t, tt.script)
			start := time.Now()
			accel, reason, err := DetectAccel(context.Background(), AccelProbe{Binary: bin, Kernel: tt.kernel, Timeout: 300 * time.Millisecond})
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if accel != tt.want {
				t.Errorf("accel = %q, want %q (reason %q)", accel, tt.want, reason)
			}
			for _, r := range tt.reason {
				if !strings.Contains(reason, r) {
					t.Errorf("reason %q\ndoes not contain %q", reason, r)
				}
			}
			if tt.maxTimeMs > 0 && took > time.Duration(tt.maxTimeMs)*time.Millisecond {
				t.Errorf("took %s", took)
			}
			assertProbeReaped(t, pidFile)
		})
	}
}

func TestDetectAccelWithoutKVMDevice(t *testing.T) {
	old := kvmDevice
	kvmDevice = filepath.Join(t.TempDir(), "no-kvm")
	t.Cleanup(func() { kvmDevice = old })
	accel, reason, err := DetectAccel(context.Background(), AccelProbe{Binary: "/nonexistent/qemu"})
	if err != nil || accel != TCG || !strings.HasPrefix(reason, "KVM unavailable: open ") || !strings.HasSuffix(reason, "; using TCG") {
		t.Errorf("DetectAccel = %q, %q, %v", accel, reason, err)
	}
}

func TestDetectAccelErrors(t *testing.T) {
	fakeKVM(t)
	if _, _, err := DetectAccel(context.Background(), AccelProbe{Binary: "/nonexistent/qemu"}); err == nil {
		t.Error("no error for a missing QEMU binary")
	}
	bin, pidFile := fakeQEMU(t, "exec sleep 30")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := DetectAccel(ctx, AccelProbe{Binary: bin, Timeout: 10 * time.Second}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("DetectAccel with an expiring ctx = %v", err)
	}
	assertProbeReaped(t, pidFile)
}

func TestCachedAccel(t *testing.T) {
	fakeKVM(t)
	bin, _ := fakeQEMU(t, `echo "SeaBIOS"; exec sleep 30`)
	cache := filepath.Join(t.TempDir(), "sub", "accel.json")
	p := AccelProbe{Binary: bin, Timeout: time.Second}
	ctx := context.Background()

	accel, reason, err := CachedAccel(ctx, p, cache)
	if err != nil || accel != KVM || strings.Contains(reason, "cached") {
		t.Fatalf("first CachedAccel = %q, %q, %v", accel, reason, err)
	}
	accel, reason, err = CachedAccel(ctx, p, cache)
	if err != nil || accel != KVM || !strings.Contains(reason, "(cached verdict from ") {
		t.Fatalf("second CachedAccel = %q, %q, %v", accel, reason, err)
	}
	if n := runs(bin); n != 1 {
		t.Errorf("probe ran %d times, want 1", n)
	}

	// A new QEMU build invalidates the verdict.
	later := time.Now().Add(time.Hour)
	os.Chtimes(bin, later, later)
	if _, reason, _ := CachedAccel(ctx, p, cache); strings.Contains(reason, "cached") {
		t.Errorf("verdict survived a QEMU update: %q", reason)
	}
	// So does a different kernel.
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(kernel, nil, 0o644)
	p.Kernel = kernel
	os.WriteFile(bin, []byte("#!/bin/sh\necho run >> "+filepath.Join(filepath.Dir(bin), "runs")+"\necho 'Linux version'; exec sleep 30\n"), 0o755)
	os.Chtimes(bin, later, later) // same mtime as the cached key: only the kernel changed
	if _, reason, _ := CachedAccel(ctx, p, cache); strings.Contains(reason, "cached") {
		t.Errorf("verdict survived a kernel change: %q", reason)
	}
	if n := runs(bin); n != 3 {
		t.Errorf("probe ran %d times, want 3", n)
	}

	// A corrupt cache is ignored, not an error.
	os.WriteFile(cache, []byte("{"), 0o644)
	if accel, _, err := CachedAccel(ctx, p, cache); err != nil || accel != KVM {
		t.Errorf("with a corrupt cache: %q, %v", accel, err)
	}
}

// TestDetectAccelRealHost runs the real probe. On the development hosts
// /dev/kvm exists but KVM cannot run a guest, so the verdict must be TCG
// with the reason; on a host with working KVM it must be KVM. Either way
// it must be quick.
func TestDetectAccelRealHost(t *testing.T) {
	bin := requireQEMU(t)
	kernel := os.Getenv("BERTH_TEST_KERNEL")
	if kernel == "" {
		kernel = defaultTestKernel
	}
	start := time.Now()
	accel, reason, err := DetectAccel(context.Background(), AccelProbe{Binary: bin, Kernel: kernel})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verdict %s after %s: %s", accel, took.Round(time.Millisecond), reason)
	if !strings.Contains(reason, "KVM") {
		t.Errorf("reason %q does not mention KVM", reason)
	}
	if took > 5*time.Second {
		t.Errorf("probe took %s, want < 5s", took)
	}
	if want := os.Getenv("BERTH_EXPECT_ACCEL"); want != "" && string(accel) != want {
		t.Errorf("verdict %s, but BERTH_EXPECT_ACCEL=%s", accel, want)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && accel != TCG {
		t.Errorf("no /dev/kvm but verdict %s", accel)
	}
}
