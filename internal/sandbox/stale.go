package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-runtime/berth/internal/hostmount"
)

// CleanupStale removes sandboxes whose owner process is gone: a `berth run`
// or shim killed with SIGKILL cannot clean up after itself. QEMU and
// virtiofsd die with their owner (Pdeathsig), so what remains are mounts
// and the directory. It returns how many sandboxes it removed.
func CleanupStale(runDir string) int {
	base := filepath.Join(runDir, "sandboxes")
	entries, err := os.ReadDir(base)
	if err != nil {
		return 0
	}
	removed := 0
	for _, e := range entries {
		// Only directories Create made: a name that is not a valid id
		// (or its hash) is not a sandbox, whatever it holds.
		if !e.IsDir() || validateID(e.Name()) != nil {
			continue
		}
		dir := filepath.Join(base, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, ownerFileName))
		if err != nil {
			continue // being created right now, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || processAlive(pid) {
			continue
		}
		if removeOrphan(dir) == nil {
			removed++
		}
	}
	return removed
}

// RemoveOrphan removes sandbox id if the process that owned it is gone:
// it kills the VM if it still runs, unmounts and deletes the directory.
// It returns ErrOwnerAlive, and touches nothing, if the owner still runs.
//
// id comes from a bundle's annotations in containerd's `shim delete`, which
// whoever wrote the pod spec controls: it is validated first, so that the
// directory removed is always one entry of <runDir>/sandboxes.
func RemoveOrphan(runDir, id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	dir := Dir(runDir, id)
	b, err := os.ReadFile(filepath.Join(dir, ownerFileName))
	if err != nil {
		if os.IsNotExist(err) {
			if _, serr := os.Stat(dir); os.IsNotExist(serr) {
				return nil
			}
		}
	} else if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && processAlive(pid) {
		return ErrOwnerAlive
	}
	return removeOrphan(dir)
}

// ErrOwnerAlive says a sandbox still has a live owner.
var ErrOwnerAlive = errors.New("sandbox owner is still running")

func removeOrphan(dir string) error {
	if b, err := os.ReadFile(filepath.Join(dir, vmmPidFileName)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && isVMM(pid, dir) {
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
	for _, m := range mountsUnder(dir) {
		unmount(m)
	}
	if err := detachRecorded(dir); err != nil {
		return fmt.Errorf("remove pod network taps and filters: %w", err)
	}
	if err := removeRecordedCgroup(context.Background(), dir); err != nil {
		return fmt.Errorf("remove sandbox cgroup: %w", err)
	}
	return removeDir(dir)
}

// isVMM checks that pid is still the QEMU of this sandbox (its command
// line names the sandbox directory), so a recycled pid is never killed.
func isVMM(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), dir)
}

func waitGone(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for processAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// processAlive reports whether pid runs. A zombie counts as dead: a killed
// shim stays one until whoever inherited it reaps it, which on some hosts
// (a PID 1 that does not reap) is never.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && err != syscall.EPERM {
		return false
	}
	f := procStat(pid)
	return len(f) > 0 && f[0] != "Z"
}

// procStat is /proc/PID/stat after the command name, which is in
// parentheses and may hold spaces: the state first, the parent second.
// nil if pid is gone or the file cannot be parsed.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string { return hostmount.MountsUnder(dir) }

// removeDir deletes a sandbox directory, but only once nothing is mounted
// below it: a container's root file system is bind-mounted there, and a
// recursive delete through a mount that failed to detach would destroy the
// user's files.
func removeDir(dir string) error { return hostmount.RemoveUnmounted(dir) }
