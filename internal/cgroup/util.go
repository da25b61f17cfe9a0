package cgroup

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// killAll SIGKILLs pids; they are gone or going, so errors do not matter.
func killAll(pids []int) {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// readProcs parses a cgroup.procs file.
func readProcs(file string) ([]int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var pids []int
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if pid, err := strconv.Atoi(sc.Text()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// deleteTimeout bounds how long Delete waits for the cgroup to empty: a
// VMM that was just SIGKILLed leaves its cgroup only once the kernel has
// torn down its memory, which for a big guest takes a moment.
const deleteTimeout = 5 * time.Second

func retryDelete(ctx context.Context, path string, del func() error) error {
	deadline := time.Now().Add(deleteTimeout)
	for {
		err := del()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: %w (%v)", path, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// writeProcs moves pid into the cgroup whose cgroup.procs is file.
func writeProcs(file string, pid int) error {
	if err := os.WriteFile(file, []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move pid %d: %w", pid, err)
	}
	return nil
}
