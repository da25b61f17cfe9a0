// Package podholder is the process a CRI pod sandbox runs in the guest:
// a C constructor (holder.c) that holds the pod's namespaces and reaps,
// and never starts the Go runtime. The agent binary imports this package
// for the constructor and starts itself as the holder through Start.
package podholder

import "C"

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Argv0 is the name the holder is started under; only a process started
// with it runs the holder (holder.c's HOLDER_ARGV0).
const Argv0 = "berth-pod-holder"

// Start starts the holder: this binary again, as Argv0, in the new
// namespaces cloneflags asks for (CLONE_NEWPID and the like), with the
// pod's hostname, the directory to chroot into, and the sysctls to set in
// its namespaces (KEY=VALUE, checked by the caller). It returns once the
// holder has set itself up, or with the holder's own message when it
// could not.
func Start(cloneflags uintptr, hostname, root string, sysctls []string) (*os.Process, error) {
	ready, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer ready.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return nil, err
	}
	defer errR.Close()
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       append([]string{Argv0, hostname, root}, sysctls...),
		Env:        []string{},
		Stderr:     errW,
		ExtraFiles: []*os.File{readyW}, // fd 3, holder.c's READY_FD
		// Its own session: no terminal signals reach it.
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: cloneflags, Setsid: true},
	}
	err = cmd.Start()
	readyW.Close()
	errW.Close()
	if err != nil {
		return nil, fmt.Errorf("start the pod's namespace holder: %w", err)
	}
	var b [1]byte
	if n, _ := ready.Read(b[:]); n == 1 && b[0] == 'R' {
		return cmd.Process, nil
	}
	// No ready byte: the holder failed and said why on stderr.
	msg, _ := io.ReadAll(io.LimitReader(errR, 4096))
	cmd.Process.Kill()
	st, _ := cmd.Process.Wait()
	return nil, fmt.Errorf("the pod's namespace holder failed (%v): %s", st, strings.TrimSpace(string(msg)))
}
