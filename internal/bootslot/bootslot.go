// Package bootslot limits how many VMs of a host boot at once: a
// host-wide counting semaphore of N slots, each a file under one directory
// held with flock(2), so that it works across the processes that boot VMs
// (one shim per pod, `berth run`) and a process that dies, however it
// dies, gives its slot back with its last file descriptor.
//
// Why: under TCG a boot is CPU-bound, and boots beyond the host's CPUs do
// not just share them, they slow each other down. Measured on the 2-vCPU
// test host (docs/benchmarks.md): 10 raw boots started at once all reached
// the agent after 8.7 s, 10 started two at a time after 3.9 s.
package bootslot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// pollInterval is how often a waiter tries the slots again. flock cannot
// block on "any of N" nor be cancelled, so waiters poll: at 10 waiters
// that is 1000 non-blocking flock calls a second, nothing next to a boot.
const pollInterval = 5 * time.Millisecond

// Slot is a held boot slot.
type Slot struct {
	once sync.Once
	f    *os.File
}

// Release gives the slot back. It is idempotent and safe on a nil Slot.
func (s *Slot) Release() {
	if s == nil {
		return
	}
	s.once.Do(func() { s.f.Close() }) // closing drops the flock
}

// Acquire takes one of n slots under dir (created if missing), waiting
// until one is free or ctx ends. waiting, if not nil, is called once if
// every slot is taken at the first try, so the caller can say why it
// waits.
func Acquire(ctx context.Context, dir string, n int, waiting func()) (*Slot, error) {
	if n < 1 {
		return nil, fmt.Errorf("boot slots: %d slots", n)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("boot slots: %w", err)
	}
	for first := true; ; first = false {
		for i := 0; i < n; i++ {
			s, err := try(filepath.Join(dir, "slot-"+strconv.Itoa(i)))
			if err != nil || s != nil {
				return s, err
			}
		}
		if first && waiting != nil {
			waiting()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for one of %d boot slots: %w", n, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// try takes the slot at path if it is free; (nil, nil) if it is held.
func try(path string) (*Slot, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("boot slot: %w", err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return &Slot{f: f}, nil
	}
	f.Close()
	if errors.Is(err, unix.EWOULDBLOCK) {
		return nil, nil
	}
	return nil, fmt.Errorf("boot slot %s: %w", path, err)
}
