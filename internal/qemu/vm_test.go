package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run real QEMU under TCG. They skip, saying why, when QEMU or
// the guest kernel is missing, and in -short mode.

const defaultTestKernel = "/tmp/k/x/boot/vmlinuz-6.1.0-56-cloud-amd64"

func requireQEMU(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU; skipped in -short mode")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not found in PATH")
	}
	return bin
}

// requireKernel returns a bootable x86_64 guest kernel: $BERTH_TEST_KERNEL
// or the Debian cloud kernel the development hosts unpack to /tmp/k.
func requireKernel(t *testing.T) string {
	t.Helper()
	k := os.Getenv("BERTH_TEST_KERNEL")
	if k == "" {
		k = defaultTestKernel
	}
	if _, err := os.Stat(k); err != nil {
		t.Skipf("no guest kernel (set BERTH_TEST_KERNEL): %v", err)
	}
	return k
}

func testMachine(t *testing.T, bin, kernel string, typ MachineType) Machine {
	dir := t.TempDir()
	return Machine{
		Binary:     bin,
		Type:       typ,
		Accel:      TCG, // KVM does not work on the development hosts
		VCPUs:      1,
		MemoryMiB:  256,
		Kernel:     kernel,
		ConsoleLog: filepath.Join(dir, "console.log"),
		QMPSocket:  filepath.Join(dir, "qmp.sock"),
		// Without an initrd the kernel panics at the root mount. panic=0
		// (after Berth's panic=-1) keeps the guest halted there, so QEMU
		// stays up for the test to shut it down.
		KernelParams: "panic=0",
	}
}

func startVM(t *testing.T, m Machine) *VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	v, err := Start(ctx, m, StartOptions{DieWithParent: true, Stderr: &lockedWriter{w: &stderr}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { v.Kill() })
	return v
}

// waitForFile polls path until it contains pattern; it returns how long
// that took.
func waitForFile(t *testing.T, path, pattern string, timeout time.Duration, start time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(pattern)) {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("%q did not appear in %s within %s; it holds:\n%s", pattern, path, timeout, tail(b, 2000))
	return 0
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// assertGone checks the leak rules: the process is reaped, and neither it
// nor its QMP socket is left.
func assertGone(t *testing.T, v *VM, m Machine) {
	t.Helper()
	select {
	case <-v.Done():
	default:
		t.Fatal("Done not closed")
	}
	if err := syscall.Kill(v.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("qemu pid %d still exists (kill 0: %v)", v.Pid(), err)
	}
	if _, err := os.Lstat(m.QMPSocket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("QMP socket %s left behind (%v)", m.QMPSocket, err)
	}
	if pids := processesWithArg(m.QMPSocket); len(pids) > 0 {
		t.Errorf("processes still using %s: %v", m.QMPSocket, pids)
	}
}

// processesWithArg lists processes whose command line mentions s.
func processesWithArg(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestBootToBannerAndShutdown(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	for _, typ := range []MachineType{Q35, MicroVM} {
		t.Run(string(typ), func(t *testing.T) {
			m := testMachine(t, bin, kernel, typ)
			start := time.Now()
			v := startVM(t, m)
			took := waitForFile(t, m.ConsoleLog, "Linux version", 30*time.Second, start)
			t.Logf("%s under TCG: \"Linux version\" %s after Start was called", typ, took.Round(time.Millisecond))

			var st struct{ Status string }
			if err := v.QMP().Execute(context.Background(), "query-status", nil, &st); err != nil || st.Status != "running" {
				t.Errorf("query-status = %+v, %v", st, err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := v.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			assertGone(t, v, m)
			if err := v.ExitError(); err != nil {
				t.Errorf("ExitError after a graceful quit = %v, want nil", err)
			}
			if err := v.Shutdown(ctx); err != nil {
				t.Errorf("second Shutdown: %v", err)
			}
			if err := v.Kill(); err != nil {
				t.Errorf("Kill after Shutdown: %v", err)
			}
		})
	}
}

func TestGuestPanicEndsQEMU(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, MicroVM)
	m.KernelParams = "" // Berth's panic=-1 applies: reboot, which -no-reboot turns into an exit
	v := startVM(t, m)
	select {
	case <-v.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("QEMU still running a minute after the guest should have panicked")
	}
	if err := v.ExitError(); err != nil {
		t.Errorf("ExitError = %v, want nil (a guest reset under -no-reboot exits 0)", err)
	}
	b, _ := os.ReadFile(m.ConsoleLog)
	if !bytes.Contains(b, []byte("Kernel panic")) {
		t.Errorf("console log shows no panic:\n%s", tail(b, 2000))
	}
	assertGone(t, v, m)
}

// A guest console capped at 8 KiB (a kernel boot writes far more) keeps
// the latest output, up to the panic that ends the VM, within the cap.
func TestCappedConsoleLogKeepsTheEnd(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, MicroVM)
	m.KernelParams = "loglevel=8"
	m.ConsoleLogMaxBytes = 8 << 10
	v := startVM(t, m)
	select {
	case <-v.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("QEMU still running a minute after the guest should have panicked")
	}
	cur, _ := os.ReadFile(m.ConsoleLog)
	old, err := os.ReadFile(m.ConsoleLog + ".1")
	if err != nil {
		t.Fatalf("no rotated console log: %v (current holds %d bytes)", err, len(cur))
	}
	if len(cur) > 8<<10 || len(old) > 8<<10 {
		t.Errorf("console logs hold %d and %d bytes, cap 8 KiB", len(cur), len(old))
	}
	if !bytes.Contains(append(old, cur...), []byte("Kernel panic")) {
		t.Errorf("capped console lost the end of the output:\n%s", tail(cur, 2000))
	}
	assertGone(t, v, m)
}

func TestKilledQEMU(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, Q35)
	v := startVM(t, m)
	if err := syscall.Kill(v.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after SIGKILL")
	}
	err := v.ExitError()
	want := fmt.Sprintf("qemu (pid %d) was killed by signal 9 (killed)", v.Pid())
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("ExitError = %v, want %q", err, want)
	}
	var pe *ProcessError
	if !errors.As(err, &pe) || pe.Signal != syscall.SIGKILL || pe.ExitCode != -1 {
		t.Errorf("ExitError = %#v", err)
	}
	assertGone(t, v, m)
	// Both are no-ops now, and must not touch a recycled pid.
	if err := v.Kill(); err != nil {
		t.Errorf("Kill after death: %v", err)
	}
	if err := v.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after death: %v", err)
	}
	if err := v.QMP().Execute(context.Background(), "query-status", nil, nil); err == nil {
		t.Error("QMP still answers after QEMU died")
	}
}

// TestShutdownKillsUnresponsiveQEMU stops QEMU with SIGSTOP so it cannot
// answer "quit"; Shutdown must fall back to SIGKILL at the deadline.
func TestShutdownKillsUnresponsiveQEMU(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, MicroVM)
	v := startVM(t, m)
	if err := syscall.Kill(v.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := v.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Shutdown took %s", took)
	}
	if err := v.ExitError(); err == nil || !strings.Contains(err.Error(), "signal 9") {
		t.Errorf("ExitError = %v, want signal 9", err)
	}
	assertGone(t, v, m)
}

func TestConcurrentStops(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, Q35)
	v := startVM(t, m)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 3; i++ {
		wg.Add(2)
		go func() { defer wg.Done(); errs <- v.Shutdown(context.Background()) }()
		go func() { defer wg.Done(); errs <- v.Kill() }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	assertGone(t, v, m)
}

func TestStartFailureReportsQEMUError(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, Q35)
	// No virtiofsd listens there, so QEMU fails while creating the
	// chardev and exits with status 1.
	missing := filepath.Join(t.TempDir(), "no-virtiofsd.sock")
	m.FileSystems = []VhostUserFS{{ID: "fs0", Tag: "rootfs", SocketPath: missing}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := Start(ctx, m, StartOptions{})
	if err == nil {
		v.Kill()
		t.Fatal("Start succeeded without a virtiofsd")
	}
	t.Logf("Start error: %v", err)
	for _, want := range []string{"qemu exited during start", "exited with status 1", "qemu-system-x86_64: -chardev socket,id=char-fs0", missing} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q", want)
		}
	}
	var pe *ProcessError
	if !errors.As(err, &pe) {
		t.Errorf("error does not wrap *ProcessError")
	}
	if _, err := os.Lstat(m.QMPSocket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("QMP socket left behind: %v", err)
	}
	if pids := processesWithArg(m.QMPSocket); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
}

func TestStartContextExpires(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, Q35)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	v, err := Start(ctx, m, StartOptions{})
	if err == nil {
		v.Kill()
		t.Skip("QEMU came up within 1ms; nothing to test")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start error = %v, want deadline exceeded", err)
	}
	if _, err := os.Lstat(m.QMPSocket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("QMP socket left behind: %v", err)
	}
	// The process is killed and reaped before Start returns.
	if pids := processesWithArg(m.QMPSocket); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
}

func TestStartMissingKernel(t *testing.T) {
	m := Machine{Binary: "qemu-system-x86_64", Type: Q35, Accel: TCG, VCPUs: 1, MemoryMiB: 256,
		Kernel: "/nonexistent/vmlinuz", QMPSocket: filepath.Join(t.TempDir(), "q")}
	_, err := Start(context.Background(), m, StartOptions{})
	if err == nil || !strings.Contains(err.Error(), "Kernel:") {
		t.Fatalf("Start = %v, want an error naming Kernel", err)
	}
}

func TestStartStaleQMPSocket(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)

	t.Run("stale socket is replaced", func(t *testing.T) {
		m := testMachine(t, bin, kernel, Q35)
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: m.QMPSocket, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close() // leaves a socket nobody listens on, like a killed QEMU
		v := startVM(t, m)
		if err := v.Kill(); err != nil {
			t.Fatal(err)
		}
		assertGone(t, v, m)
	})
	t.Run("live socket is refused", func(t *testing.T) {
		m := testMachine(t, bin, kernel, Q35)
		l, err := net.Listen("unix", m.QMPSocket)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if _, err := Start(context.Background(), m, StartOptions{}); err == nil || !strings.Contains(err.Error(), "another process is listening") {
			t.Fatalf("Start = %v", err)
		}
	})
	t.Run("regular file is refused", func(t *testing.T) {
		m := testMachine(t, bin, kernel, Q35)
		os.WriteFile(m.QMPSocket, []byte("precious"), 0o644)
		if _, err := Start(context.Background(), m, StartOptions{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Start = %v", err)
		}
		if b, _ := os.ReadFile(m.QMPSocket); string(b) != "precious" {
			t.Error("Start clobbered a regular file")
		}
	})
}

// TestGuestSeesDevices boots a tiny busybox initramfs that loads the
// guest's virtio modules, then checks from the host that the guest found
// the virtio-serial port by name (it writes to it) and mounts the
// virtio-fs share (it prints a file from it). On microvm this is what
// proves ACPI discovery of virtio-mmio devices with a modular driver.
func TestGuestSeesDevices(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	virtiofsd := "/usr/lib/qemu/virtiofsd"
	if _, err := os.Stat(virtiofsd); err != nil {
		t.Skipf("no virtiofsd: %v", err)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox to build the test initramfs")
	}
	// <root>/boot/vmlinuz-<release> -> <root>/lib/modules/<release>
	release := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	modDir := filepath.Join(filepath.Dir(filepath.Dir(kernel)), "lib", "modules", release, "kernel")
	if _, err := os.Stat(modDir); err != nil {
		t.Skipf("no modules for %s: %v", kernel, err)
	}

	for _, typ := range []MachineType{Q35, MicroVM} {
		t.Run(string(typ), func(t *testing.T) {
			dir := t.TempDir()
			initrd := filepath.Join(dir, "initrd.cpio")
			if err := buildTestInitrd(initrd, busybox, modDir); err != nil {
				t.Skipf("building test initramfs: %v", err)
			}
			share := filepath.Join(dir, "share")
			os.Mkdir(share, 0o755)
			os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello from the host\n"), 0o644)
			fsSock := filepath.Join(dir, "fs.sock")
			fsd := exec.Command(virtiofsd, "--socket-path="+fsSock, "-o", "source="+share, "-o", "cache=auto")
			fsd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := fsd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { fsd.Process.Kill(); fsd.Wait() })
			for i := 0; i < 100; i++ {
				if _, err := os.Stat(fsSock); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}

			m := testMachine(t, bin, kernel, typ)
			m.MemoryMiB = 512
			m.Initrd = initrd
			m.KernelParams = ""
			m.SerialPorts = []VirtioSerialPort{{ID: "agent", Name: "berth.test", SocketPath: filepath.Join(dir, "agent.sock")}}
			m.FileSystems = []VhostUserFS{{ID: "fs0", Tag: "berthfs", SocketPath: fsSock}}
			start := time.Now()
			v := startVM(t, m)

			// Connect before the guest's init runs; virtio-serial
			// reports the host side as closed until then.
			conn, err := net.Dial("unix", m.SerialPorts[0].SocketPath)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil || line != "berth-ping\n" {
				b, _ := os.ReadFile(m.ConsoleLog)
				t.Fatalf("read %q, %v from the serial port; console:\n%s", line, err, tail(b, 3000))
			}
			t.Logf("%s: guest wrote to its virtio-serial port %s after Start", typ, time.Since(start).Round(time.Millisecond))

			select {
			case <-v.Done():
			case <-time.After(60 * time.Second):
				t.Fatal("guest did not power off")
			}
			b, _ := os.ReadFile(m.ConsoleLog)
			if !bytes.Contains(b, []byte("berth-test: fs says hello from the host")) {
				t.Errorf("guest did not read the virtio-fs share; console:\n%s", tail(b, 3000))
			}
			if err := v.ExitError(); err != nil {
				t.Errorf("ExitError after guest power-off = %v", err)
			}
			assertGone(t, v, m)
			if _, err := os.Lstat(m.SerialPorts[0].SocketPath); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("serial port socket left behind: %v", err)
			}
		})
	}
}

// Modules in load order (dependencies first), as paths under kernel/.
// Those a kernel has built in are simply absent and skipped.
var testModules = []string{
	"drivers/virtio/virtio_ring.ko",
	"drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_mmio.ko",
	"drivers/virtio/virtio_pci_legacy_dev.ko",
	"drivers/virtio/virtio_pci_modern_dev.ko",
	"drivers/virtio/virtio_pci.ko",
	"drivers/char/virtio_console.ko",
	"fs/fuse/fuse.ko",
	"fs/fuse/virtiofs.ko",
}

const testInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /modules); do
	/bin/busybox insmod /lib/modules/$m || echo "berth-test: insmod $m failed"
done
port=
for i in $(/bin/busybox seq 100); do
	for p in /sys/class/virtio-ports/*; do
		[ "$(/bin/busybox cat $p/name 2>/dev/null)" = berth.test ] && port=/dev/$(/bin/busybox basename $p)
	done
	[ -n "$port" ] && break
	/bin/busybox sleep 0.1
done
echo "berth-test: port $port"
echo berth-ping > $port
if /bin/busybox mount -t virtiofs berthfs /mnt; then
	echo "berth-test: fs says $(/bin/busybox cat /mnt/hello.txt)"
fi
echo "berth-test: done"
/bin/busybox poweroff -f
`

func buildTestInitrd(out, busybox, modDir string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if !bytes.Contains(bb, []byte("statically linked")) && !isStatic(busybox) {
		return fmt.Errorf("%s is not statically linked", busybox)
	}
	w := &cpioWriter{}
	w.dir("bin")
	w.dir("lib")
	w.dir("lib/modules")
	w.file("bin/busybox", 0o755, bb)
	w.file("init", 0o755, []byte(testInit))
	var order []string
	for _, m := range testModules {
		b, err := os.ReadFile(filepath.Join(modDir, m))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		w.file("lib/modules/"+filepath.Base(m), 0o644, b)
		order = append(order, filepath.Base(m))
	}
	w.file("modules", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	return os.WriteFile(out, w.finish(), 0o644)
}

// isStatic reports whether an ELF file has no program interpreter.
func isStatic(path string) bool {
	out, err := exec.Command("file", "-L", path).Output()
	return err == nil && bytes.Contains(out, []byte("statically linked"))
}

// cpioWriter writes the "newc" format the kernel unpacks as initramfs.
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) entry(name string, mode uint32, data []byte) {
	w.ino++
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *cpioWriter) dir(name string)                         { w.entry(name, 0o040755, nil) }
func (w *cpioWriter) file(name string, perm uint32, b []byte) { w.entry(name, 0o100000|perm, b) }
func (w *cpioWriter) finish() []byte {
	w.entry("TRAILER!!!", 0, nil)
	return w.buf.Bytes()
}

// lockedWriter lets a test read QEMU's output while it is written.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestVsockArgs checks QEMU accepts the vsock device on both machines. On
// hosts without /dev/vhost-vsock (like the development hosts) QEMU gets as
// far as realising the device and fails opening it, which still proves
// the arguments parse.
func TestVsockArgs(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	_, statErr := os.Stat("/dev/vhost-vsock")
	for i, typ := range []MachineType{Q35, MicroVM} {
		t.Run(string(typ), func(t *testing.T) {
			m := testMachine(t, bin, kernel, typ)
			m.ConsoleLog = "" // also covers a VM without a console log ("-serial null")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			v, err := Start(ctx, m, StartOptions{})
			if err != nil {
				t.Fatalf("Start without a console log: %v", err)
			}
			v.Kill()
			assertGone(t, v, m)

			m.Vsock = &VsockDevice{GuestCID: uint32(1000 + os.Getpid()%10000*2 + i)}
			v, err = Start(ctx, m, StartOptions{})
			if statErr != nil {
				if err == nil {
					v.Kill()
					t.Fatal("Start succeeded without /dev/vhost-vsock")
				}
				if !strings.Contains(err.Error(), "-device vhost-vsock-") || !strings.Contains(err.Error(), "vhost") {
					t.Fatalf("unexpected error: %v", err)
				}
				t.Logf("without /dev/vhost-vsock: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if err := v.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			assertGone(t, v, m)
		})
	}
}

// A QEMU under -sandbox and running as an unprivileged uid boots, and the
// kernel confirms both: its uid is not root and seccomp is in filter mode.
func TestSandboxedUnprivilegedQEMUBoots(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to start QEMU as another uid")
	}
	const uid = 0x70000000 + 4242
	m := testMachine(t, bin, kernel, Q35)
	m.Sandbox = true
	m.ConsoleLogMaxBytes = 1 << 20
	dir := filepath.Dir(m.QMPSocket)
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parent is 0700: let the uid through (not list it).
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	v, err := Start(ctx, m, StartOptions{DieWithParent: true, Stderr: &lockedWriter{w: &stderr},
		Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}})
	if err != nil {
		t.Fatalf("Start: %v\n%s", err, stderr.String())
	}
	t.Cleanup(func() { v.Kill() })
	waitForFile(t, m.ConsoleLog, "Linux version", 30*time.Second, time.Now())
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", v.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", uid, uid, uid, uid), "Seccomp:\t2", "CapEff:\t0000000000000000"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("QEMU's /proc status lacks %q:\n%s", want, status)
		}
	}
	if err := v.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	assertGone(t, v, m)
}
