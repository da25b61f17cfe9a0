package shim

import (
	"fmt"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
)

// A task's init and each exec go through explicit states, as in
// containerd's runc shim (cmd/containerd-shim-runc-v2/process/
// init_state.go): every state answers every operation, an illegal one is
// refused at once with containerd's error class, and every change goes
// through one function, next.
//
// Unlike runc's shim, no lock is held while the guest works: an operation
// that needs the guest first moves the process into a transient state
// (starting, pausing, resuming) under the process's lock, makes the guest
// call without it, and then finishes with the call's outcome. The
// transient state is what other requests see meanwhile, so there is no
// check-then-act across a dropped lock: a second Start finds "starting"
// and is refused, an exec finds "pausing" and is refused as if paused.
// An exit may arrive at any time; it always wins (stopped), and the
// outcome of a guest call that raced with it is then ignored.

// procState is a process's state.
type procState int

const (
	stateCreated procState = iota
	stateStarting
	stateRunning
	statePausing
	statePaused
	stateResuming
	stateStopped
	stateDeleted
	numStates
)

var stateNames = [numStates]string{"created", "starting", "running", "pausing", "paused", "resuming", "stopped", "deleted"}

func (s procState) String() string {
	if s >= 0 && s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// procOp is something done to a process, by a request or by an event.
type procOp int

const (
	opStart        procOp = iota // Start requested
	opStarted                    // the guest started it
	opStartFailed                // the guest did not start it
	opPause                      // Pause requested (init only)
	opPaused                     // the guest froze it
	opPauseFailed                // the guest did not freeze it
	opResume                     // Resume requested (init only)
	opResumed                    // the guest thawed it
	opResumeFailed               // the guest did not thaw it
	opExec                       // an exec is added to the container, or started in it (init only)
	opKill                       // a signal (never changes the state)
	opUpdate                     // new resources (init only)
	opDelete                     // Delete requested
	opExit                       // the process exited (or its VM died)
	numOps
)

var opNames = [numOps]string{"start", "started", "start failed", "pause", "paused", "pause failed",
	"resume", "resumed", "resume failed", "exec", "kill", "update", "delete", "exit"}

func (o procOp) String() string {
	if o >= 0 && o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// errInvalidTransition is a broken invariant of the shim itself (an
// outcome reported for a request that was never begun), never a
// client's mistake.
var errInvalidTransition = fmt.Errorf("invalid state transition: %w", errdefs.ErrInternal)

func refused(msg string) error { return fmt.Errorf("%s: %w", msg, errdefs.ErrFailedPrecondition) }

// next is the state machine: the state op leads to from st, or why op is
// refused. Operations that only check (exec, kill, update) return st.
func next(st procState, op procOp) (procState, error) {
	if st == stateDeleted {
		if op == opExit {
			return stateDeleted, nil
		}
		return st, fmt.Errorf("process has been deleted: %w", errdefs.ErrNotFound)
	}
	if op == opExit {
		return stateStopped, nil
	}
	if op == opKill {
		// Allowed in every state: a kill during start must reach the
		// guest, and a kill of an exited process succeeds (CRI retries
		// kills and expects that); the caller skips the guest then.
		return st, nil
	}
	// An exit that raced with a guest call wins over its outcome.
	if st == stateStopped {
		switch op {
		case opStarted, opStartFailed, opPaused, opPauseFailed, opResumed, opResumeFailed:
			return st, nil
		}
	}
	switch op {
	case opStart:
		switch st {
		case stateCreated:
			return stateStarting, nil
		case stateStarting:
			return st, refused("the process is being started")
		case statePausing, statePaused, stateResuming:
			return st, refused("cannot start a paused process")
		case stateStopped:
			return st, refused("cannot start a stopped process")
		}
		return st, refused("cannot start a running process")
	case opStarted, opStartFailed:
		if st != stateStarting {
			break
		}
		if op == opStarted {
			return stateRunning, nil
		}
		return stateCreated, nil
	case opPause:
		switch st {
		case stateRunning:
			return statePausing, nil
		case stateCreated, stateStarting:
			return st, refused("cannot pause task in created state")
		case statePausing, statePaused, stateResuming:
			return st, refused("cannot pause a paused container")
		}
		return st, refused("cannot pause a stopped container")
	case opPaused, opPauseFailed:
		if st != statePausing {
			break
		}
		if op == opPaused {
			return statePaused, nil
		}
		return stateRunning, nil
	case opResume:
		switch st {
		case statePaused:
			return stateResuming, nil
		case stateCreated, stateStarting:
			return st, refused("cannot resume task in created state")
		case stateResuming:
			return st, refused("the container is being resumed")
		case stateRunning, statePausing:
			return st, refused("cannot resume a running process")
		}
		return st, refused("cannot resume a stopped container")
	case opResumed, opResumeFailed:
		if st != stateResuming {
			break
		}
		if op == opResumed {
			return stateRunning, nil
		}
		return statePaused, nil
	case opExec:
		switch st {
		case stateCreated, stateStarting, stateRunning:
			return st, nil
		case statePausing, statePaused, stateResuming:
			return st, refused("cannot exec in a paused state")
		}
		return st, refused("cannot exec in a stopped state")
	case opUpdate:
		if st == stateStopped {
			return st, refused("cannot update a stopped container")
		}
		return st, nil
	case opDelete:
		switch st {
		case stateCreated, stateStopped:
			return stateDeleted, nil
		case statePausing, statePaused, stateResuming:
			return st, refused("cannot delete a paused process")
		}
		return st, refused("cannot delete a running process; kill it first")
	}
	return st, fmt.Errorf("%v in state %v: %w", op, st, errInvalidTransition)
}

// taskStatus is how containerd sees a state.
func (s procState) taskStatus() task.Status {
	switch s {
	case stateCreated, stateStarting:
		return task.Status_CREATED
	case stateRunning:
		return task.Status_RUNNING
	case statePausing:
		return task.Status_PAUSING
	case statePaused, stateResuming:
		return task.Status_PAUSED
	}
	return task.Status_STOPPED
}
