package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// AccelProbe says how DetectAccel tests KVM.
type AccelProbe struct {
	// Binary is the QEMU to test; empty means qemu-system-x86_64 from
	// PATH.
	Binary string
	// Kernel is a guest kernel to boot. It is optional but much stronger
	// evidence than firmware alone: on a host whose KVM is broken for
	// 64-bit guests, SeaBIOS still runs (it stays in 16/32-bit mode) while
	// the kernel hangs right after its real-mode setup.
	Kernel string
	// Timeout bounds the test boot; 0 means DefaultProbeTimeout.
	Timeout time.Duration
}

// DefaultProbeTimeout is long enough for a kernel to print its banner
// under KVM (well under a second) with room for a loaded host, and short
// enough to decide quickly on a host where KVM hangs.
const DefaultProbeTimeout = 3 * time.Second

// kvmDevice is a variable so tests can point it elsewhere.
var kvmDevice = "/dev/kvm"

// What the probe guest prints when it makes progress under KVM.
const (
	kernelBanner   = "Linux version"
	firmwareBanner = "SeaBIOS"
	// kvmInternalError starts QEMU's message when KVM cannot emulate
	// something; QEMU then pauses the VM instead of exiting, so the probe
	// watches stderr rather than waiting for an exit.
	kvmInternalError = "KVM internal error"
)

// DetectAccel decides whether VMs on this host should use KVM or TCG by
// actually running a guest under KVM: /dev/kvm existing says little when
// KVM is nested or paravirtualised and fails at the first real
// instruction. The probe boots p.Kernel (or only the firmware) with the
// same CPU model Berth uses with KVM (-cpu host), and KVM counts as usable
// only if the guest prints its banner before QEMU reports an error or
// exits, within p.Timeout.
//
// The string explains the verdict in plain words. An error means the probe
// itself could not run (no QEMU binary, ctx ended), not that KVM failed.
// The probe VM is always killed before DetectAccel returns.
func DetectAccel(ctx context.Context, p AccelProbe) (Accel, string, error) {
	if f, err := os.OpenFile(kvmDevice, os.O_RDWR, 0); err != nil {
		return TCG, fmt.Sprintf("KVM unavailable: %v; using TCG", err), nil
	} else {
		f.Close()
	}
	bin, err := qemuBinary(p.Binary)
	if err != nil {
		return "", "", err
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	kernel := p.Kernel
	if kernel != "" {
		if _, err := os.Stat(kernel); err != nil {
			kernel = "" // fall back to the firmware probe
		}
	}
	return runKVMProbe(ctx, bin, kernel, timeout)
}

func qemuBinary(bin string) (string, error) {
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("finding qemu: %w", err)
	}
	return path, nil
}

// probeArgs builds the test VM. The guest's output goes to QEMU's stdout
// so it can be matched as it arrives: the serial port when booting a
// kernel, or the debug console at port 0x402, where SeaBIOS always logs,
// when booting firmware only.
func probeArgs(kernel string) []string {
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "q35", "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256M",
		"-chardev", "stdio,id=probe,signal=off",
	}
	if kernel != "" {
		return append(args, "-serial", "chardev:probe",
			"-kernel", kernel, "-append", "console=ttyS0 panic=-1 reboot=t")
	}
	return append(args, "-serial", "none", "-device", "isa-debugcon,iobase=0x402,chardev=probe")
}

type probeEvent struct {
	kind   int // one of the probe* constants
	detail string
	err    error
}

// probeDrainGrace bounds how long the probe waits for QEMU's output after
// QEMU exits.
const probeDrainGrace = 200 * time.Millisecond

const (
	probeProgress = iota
	probeKVMError
	probeExited
)

func runKVMProbe(ctx context.Context, bin, kernel string, timeout time.Duration) (Accel, string, error) {
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		return "", "", err
	}
	defer stdoutR.Close()
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		stdoutW.Close()
		return "", "", err
	}
	defer stderrR.Close()

	cmd := exec.Command(bin, probeArgs(kernel)...)
	cmd.Stdout = stdoutW
	cmd.Stderr = stderrW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err = cmd.Start()
	stdoutW.Close() // QEMU holds its own copies; EOF then means it exited
	stderrW.Close()
	if err != nil {
		return "", "", fmt.Errorf("starting KVM probe %s: %w", bin, err)
	}

	banner := firmwareBanner
	if kernel != "" {
		banner = kernelBanner
	}
	// One buffered channel keeps the order: a banner seen on stdout is
	// reported before the exit that follows it.
	events := make(chan probeEvent, 4)
	stderr := newTailWriter(nil)
	outDone := make(chan struct{})
	errDone := make(chan struct{})
	go func() {
		defer close(outDone)
		// Keep reading after the match so QEMU never blocks on a full
		// pipe before it is killed.
		io.Copy(&lineWatcher{match: banner, found: func(string) {
			events <- probeEvent{kind: probeProgress}
		}}, stdoutR)
	}()
	go func() {
		defer close(errDone)
		io.Copy(io.MultiWriter(stderr, &lineWatcher{match: kvmInternalError, found: func(l string) {
			events <- probeEvent{kind: probeKVMError, detail: l}
		}}), stderrR)
	}()
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		// Stdout and stderr are *os.File, so Wait does not wait for
		// them: it returns when QEMU exits, even if something QEMU
		// started still holds the pipes.
		err := cmd.Wait()
		// Let the readers see QEMU's last words, so a banner printed
		// just before exiting counts as progress and the exit reason
		// is complete.
		grace, cancel := context.WithTimeout(context.Background(), probeDrainGrace)
		defer cancel()
		for _, ch := range []chan struct{}{outDone, errDone} {
			select {
			case <-ch:
			case <-grace.Done():
			}
		}
		events <- probeEvent{kind: probeExited, err: err}
	}()
	defer func() {
		cmd.Process.Kill()
		<-reaped
		// Unblock readers still waiting on a pipe that an orphan holds.
		stdoutR.Close()
		stderrR.Close()
		<-outDone
		<-errDone
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	what := "the test kernel"
	if kernel == "" {
		what = "the firmware"
	}
	select {
	case ev := <-events:
		switch ev.kind {
		case probeProgress:
			return KVM, fmt.Sprintf("KVM works: %s printed %q under KVM after %s", what, banner, time.Since(start).Round(time.Millisecond)), nil
		case probeKVMError:
			return TCG, fmt.Sprintf("KVM failed: %s; using TCG", ev.detail), nil
		default:
			status := "qemu exited"
			var ee *exec.ExitError
			if errors.As(ev.err, &ee) {
				status = fmt.Sprintf("qemu exited with status %d", ee.ExitCode())
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					status = fmt.Sprintf("qemu was killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
				}
			}
			if out := stderr.Tail(); out != "" {
				status += ": " + out
			}
			return TCG, fmt.Sprintf("KVM failed: %s printed nothing before %s; using TCG", what, status), nil
		}
	case <-timer.C:
		reason := fmt.Sprintf("KVM failed: %s printed nothing under KVM within %s", what, timeout)
		if out := stderr.Tail(); out != "" {
			reason += " (qemu: " + out + ")"
		}
		return TCG, reason + "; using TCG", nil
	case <-ctx.Done():
		return "", "", fmt.Errorf("probing KVM: %w", ctx.Err())
	}
}

// lineWatcher calls found once for the first complete line containing
// match.
type lineWatcher struct {
	match string
	found func(line string)
	buf   []byte
	done  bool
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	if w.done {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
		if strings.Contains(line, w.match) {
			w.done = true
			w.found(line)
			return len(p), nil
		}
	}
	if len(w.buf) > 4096 { // no newline in sight; don't grow forever
		w.buf = w.buf[len(w.buf)-len(w.match):]
	}
	return len(p), nil
}

// accelCacheKey identifies the inputs of a probe. The boot ID is part of
// it because KVM's behaviour depends on the running host kernel and its
// module parameters, which can change only across reboots in practice.
type accelCacheKey struct {
	Binary      string `json:"binary"`
	BinaryMtime int64  `json:"binary_mtime_ns"`
	Kernel      string `json:"kernel,omitempty"`
	KernelMtime int64  `json:"kernel_mtime_ns,omitempty"`
	BootID      string `json:"boot_id"`
}

type accelCacheEntry struct {
	Key      accelCacheKey `json:"key"`
	Accel    Accel         `json:"accel"`
	Reason   string        `json:"reason"`
	ProbedAt time.Time     `json:"probed_at"`
}

// CachedAccel is DetectAccel with its verdict kept in cacheFile, keyed by
// the QEMU binary's path and mtime, the kernel's path and mtime, and the
// host's boot ID, so the test boot runs once per host boot and software
// update rather than once per VM. A missing or unreadable /dev/kvm is
// still checked every time (it is cheap, and a module can be unloaded
// without a reboot). Only verdicts are cached, never probe errors; failing
// to write the cache costs another probe next time and is not an error.
func CachedAccel(ctx context.Context, p AccelProbe, cacheFile string) (Accel, string, error) {
	if f, err := os.OpenFile(kvmDevice, os.O_RDWR, 0); err != nil {
		return TCG, fmt.Sprintf("KVM unavailable: %v; using TCG", err), nil
	} else {
		f.Close()
	}
	key, err := cacheKey(p)
	if err != nil {
		return "", "", err
	}
	if b, err := os.ReadFile(cacheFile); err == nil {
		var e accelCacheEntry
		if json.Unmarshal(b, &e) == nil && e.Key == key && (e.Accel == KVM || e.Accel == TCG) {
			return e.Accel, fmt.Sprintf("%s (cached verdict from %s)", e.Reason, e.ProbedAt.Format(time.RFC3339)), nil
		}
	}

	p.Binary = key.Binary
	accel, reason, err := DetectAccel(ctx, p)
	if err != nil {
		return "", "", err
	}
	writeCache(cacheFile, accelCacheEntry{Key: key, Accel: accel, Reason: reason, ProbedAt: time.Now().UTC()})
	return accel, reason, nil
}

func cacheKey(p AccelProbe) (accelCacheKey, error) {
	bin, err := qemuBinary(p.Binary)
	if err != nil {
		return accelCacheKey{}, err
	}
	if abs, err := filepath.Abs(bin); err == nil {
		bin = abs
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return accelCacheKey{}, fmt.Errorf("qemu binary: %w", err)
	}
	key := accelCacheKey{Binary: bin, BinaryMtime: fi.ModTime().UnixNano()}
	if p.Kernel != "" {
		if fi, err := os.Stat(p.Kernel); err == nil {
			key.Kernel = p.Kernel
			if abs, err := filepath.Abs(p.Kernel); err == nil {
				key.Kernel = abs
			}
			key.KernelMtime = fi.ModTime().UnixNano()
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		key.BootID = strings.TrimSpace(string(b))
	}
	return key, nil
}

// writeCache replaces cacheFile atomically, so concurrent shims never read
// half a file.
func writeCache(cacheFile string, e accelCacheEntry) {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return
	}
	dir := filepath.Dir(cacheFile)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".accel-*.json")
	if err != nil {
		return
	}
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), cacheFile) != nil {
		os.Remove(tmp.Name())
	}
}
