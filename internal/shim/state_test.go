package shim

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
)

// outcome is what next should do: move to a state, or refuse with an
// error class (and, for requests, containerd's words).
type outcome struct {
	to   procState
	err  error
	text string
}

func to(s procState) outcome { return outcome{to: s} }
func no(text string) outcome { return outcome{err: errdefs.ErrFailedPrecondition, text: text} }
func gone() outcome          { return outcome{err: errdefs.ErrNotFound} }
func bug() outcome           { return outcome{err: errdefs.ErrInternal} }

// TestStateMachine covers every state crossed with every operation.
func TestStateMachine(t *testing.T) {
	C, S, R, Pg, P, Rg, St, D := stateCreated, stateStarting, stateRunning, statePausing, statePaused, stateResuming, stateStopped, stateDeleted
	table := map[procState]map[procOp]outcome{
		C: {
			opStart: to(S), opStarted: bug(), opStartFailed: bug(),
			opPause: no("cannot pause task in created state"), opPaused: bug(), opPauseFailed: bug(),
			opResume: no("cannot resume task in created state"), opResumed: bug(), opResumeFailed: bug(),
			opExec: to(C), opKill: to(C), opUpdate: to(C), opDelete: to(D), opExit: to(St),
		},
		S: {
			opStart: no("being started"), opStarted: to(R), opStartFailed: to(C),
			opPause: no("cannot pause task in created state"), opPaused: bug(), opPauseFailed: bug(),
			opResume: no("cannot resume task in created state"), opResumed: bug(), opResumeFailed: bug(),
			opExec: to(S), opKill: to(S), opUpdate: to(S), opDelete: no("cannot delete a running process"), opExit: to(St),
		},
		R: {
			opStart: no("cannot start a running process"), opStarted: bug(), opStartFailed: bug(),
			opPause: to(Pg), opPaused: bug(), opPauseFailed: bug(),
			opResume: no("cannot resume a running process"), opResumed: bug(), opResumeFailed: bug(),
			opExec: to(R), opKill: to(R), opUpdate: to(R), opDelete: no("cannot delete a running process"), opExit: to(St),
		},
		Pg: {
			opStart: no("cannot start a paused process"), opStarted: bug(), opStartFailed: bug(),
			opPause: no("cannot pause a paused container"), opPaused: to(P), opPauseFailed: to(R),
			opResume: no("cannot resume a running process"), opResumed: bug(), opResumeFailed: bug(),
			opExec: no("cannot exec in a paused state"), opKill: to(Pg), opUpdate: to(Pg), opDelete: no("cannot delete a paused process"), opExit: to(St),
		},
		P: {
			opStart: no("cannot start a paused process"), opStarted: bug(), opStartFailed: bug(),
			opPause: no("cannot pause a paused container"), opPaused: bug(), opPauseFailed: bug(),
			opResume: to(Rg), opResumed: bug(), opResumeFailed: bug(),
			opExec: no("cannot exec in a paused state"), opKill: to(P), opUpdate: to(P), opDelete: no("cannot delete a paused process"), opExit: to(St),
		},
		Rg: {
			opStart: no("cannot start a paused process"), opStarted: bug(), opStartFailed: bug(),
			opPause: no("cannot pause a paused container"), opPaused: bug(), opPauseFailed: bug(),
			opResume: no("being resumed"), opResumed: to(R), opResumeFailed: to(P),
			opExec: no("cannot exec in a paused state"), opKill: to(Rg), opUpdate: to(Rg), opDelete: no("cannot delete a paused process"), opExit: to(St),
		},
		// An exit that raced with a guest call wins over its outcome.
		St: {
			opStart: no("cannot start a stopped process"), opStarted: to(St), opStartFailed: to(St),
			opPause: no("cannot pause a stopped container"), opPaused: to(St), opPauseFailed: to(St),
			opResume: no("cannot resume a stopped container"), opResumed: to(St), opResumeFailed: to(St),
			opExec: no("cannot exec in a stopped state"), opKill: to(St), opUpdate: no("cannot update a stopped container"), opDelete: to(D), opExit: to(St),
		},
		D: {
			opStart: gone(), opStarted: gone(), opStartFailed: gone(),
			opPause: gone(), opPaused: gone(), opPauseFailed: gone(),
			opResume: gone(), opResumed: gone(), opResumeFailed: gone(),
			opExec: gone(), opKill: gone(), opUpdate: gone(), opDelete: gone(), opExit: to(D),
		},
	}
	if len(table) != int(numStates) {
		t.Fatalf("table covers %d of %d states", len(table), numStates)
	}
	for st, row := range table {
		for op := procOp(0); op < numOps; op++ {
			want, ok := row[op]
			if !ok {
				t.Fatalf("table lacks %v x %v", st, op)
			}
			got, err := next(st, op)
			switch {
			case want.err == nil && err != nil:
				t.Errorf("%v x %v: refused (%v), want %v", st, op, err, want.to)
			case want.err == nil && got != want.to:
				t.Errorf("%v x %v: %v, want %v", st, op, got, want.to)
			case want.err != nil && !errors.Is(err, want.err):
				t.Errorf("%v x %v: %v (err %v), want error class %v", st, op, got, err, want.err)
			case want.err != nil && !strings.Contains(err.Error(), want.text):
				t.Errorf("%v x %v: %q, want it to say %q", st, op, err, want.text)
			case want.err != nil && got != st:
				t.Errorf("%v x %v: refused but moved to %v", st, op, got)
			}
		}
	}
}

func TestTaskStatus(t *testing.T) {
	for st, want := range map[procState]task.Status{
		stateCreated: task.Status_CREATED, stateStarting: task.Status_CREATED, stateRunning: task.Status_RUNNING,
		statePausing: task.Status_PAUSING, statePaused: task.Status_PAUSED, stateResuming: task.Status_PAUSED,
		stateStopped: task.Status_STOPPED, stateDeleted: task.Status_STOPPED,
	} {
		if got := st.taskStatus(); got != want {
			t.Errorf("%v: %v, want %v", st, got, want)
		}
	}
}

// TestPauseRefusedWhileExecStarts: an exec half-way into the container
// would be frozen there by a Pause; the Pause is refused meanwhile, and an
// exec start is refused in a paused container.
func TestPauseRefusedWhileExecStarts(t *testing.T) {
	init := newProcess("c", "", stdioPaths{}, nil, nil)
	init.state = stateRunning
	if err := init.beginExecStart(); err != nil {
		t.Fatal(err)
	}
	if err := init.beginPause(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("pause during an exec start: %v", err)
	}
	init.endExecStart()
	if err := init.beginPause(); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if err := init.beginExecStart(); err == nil || !strings.Contains(err.Error(), "cannot exec in a paused state") {
		t.Fatalf("exec start while pausing: %v", err)
	}
}

// TestExitDuringStart: the exit is recorded whatever the guest call says
// afterwards, and Kill of the exited process is accepted.
func TestExitDuringStart(t *testing.T) {
	p := newProcess("c", "e", stdioPaths{}, nil, nil)
	if err := p.do(opStart); err != nil {
		t.Fatal(err)
	}
	if !p.setExited(255, time.Now()) || p.setExited(1, time.Now()) {
		t.Fatal("setExited must record the first exit only")
	}
	if err := p.do(opStartFailed); err != nil || p.status() != task.Status_STOPPED {
		t.Fatalf("after a raced exit: %v, %v", err, p.status())
	}
	if err := p.do(opKill); err != nil {
		t.Fatalf("kill of an exited process: %v", err)
	}
	if st, _ := p.exit(); st != 255 {
		t.Fatalf("exit status %d", st)
	}
}
