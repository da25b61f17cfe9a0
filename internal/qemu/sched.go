package qemu

import (
	"fmt"
	"os/exec"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// BatchSlice is the time slice asked for QEMU's threads when they run as
// batch work (StartOptions.Batch). Linux honours a fair task's own slice
// from 6.12 on (sched_attr.sched_runtime, 0.1-100 ms); older kernels
// ignore the field for SCHED_BATCH and keep their default slice.
const BatchSlice = 20 * time.Millisecond

// batchAttr is SCHED_BATCH with BatchSlice.
var batchAttr = unix.SchedAttr{
	Size:    unix.SizeofSchedAttr,
	Policy:  unix.SCHED_BATCH,
	Runtime: uint64(BatchSlice),
}

// startBatch starts cmd with QEMU, and every thread it will create,
// scheduled as SCHED_BATCH with BatchSlice.
//
// Why: under TCG QEMU is CPU-bound emulation, and when many VMs share few
// host CPUs (a burst of pod starts) the default policy lets every wake-up
// of one VM's threads preempt another VM's vCPU. Each switch costs the
// next VM its caches (translated code is per process: nothing is shared),
// so the same boots take more CPU. Batch tasks do not preempt on wake-up
// and, with the longer slice, run longer between switches: eight `berth
// run`s at once on two CPUs finished ~10% sooner and used ~10% less CPU
// each (docs/benchmarks.md), and a VM alone on the host does not notice.
//
// The policy is set on the calling OS thread just for the fork, so the
// child inherits it before it runs a single instruction (setting it
// afterwards, thread by thread, would race with QEMU creating its vCPU
// threads), then the thread's own policy is put back. The thread must
// stay alive: with DieWithParent, QEMU's death signal follows the thread
// that forked it.
func startBatch(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	old, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return fmt.Errorf("sched_getattr: %w", err)
	}
	attr := batchAttr
	attr.Nice = old.Nice // a niced shim's QEMU stays niced
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		return fmt.Errorf("sched_setattr SCHED_BATCH: %w", err)
	}
	startErr := cmd.Start()
	// Back to what the thread had, so that the rest of this process
	// keeps its policy. Failing that (it cannot, for a thread going back
	// to its own earlier policy) leaves one Go thread batch-scheduled,
	// which only makes it yield a little more readily.
	if old.Policy != unix.SCHED_DEADLINE {
		old.Runtime = 0 // the base slice, not a custom one
	}
	_ = unix.SchedSetAttr(0, old, 0)
	return startErr
}
