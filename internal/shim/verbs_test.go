package shim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// class is the containerd error class a verb answers with.
type class int

const (
	ok class = iota
	failedPrecondition
	notFound
	deadline // Wait still waiting
)

func (c class) String() string {
	return [...]string{"ok", "FailedPrecondition", "NotFound", "DeadlineExceeded"}[c]
}

func classOf(err error) class {
	err = errgrpc.ToNative(err)
	switch {
	case err == nil:
		return ok
	case errdefs.IsFailedPrecondition(err):
		return failedPrecondition
	case errdefs.IsNotFound(err):
		return notFound
	case errdefs.IsDeadlineExceeded(err) || errors.Is(err, context.DeadlineExceeded):
		return deadline
	}
	return -1
}

const cid = "c1"

// toState brings container c1's init into state (created, running,
// paused, stopped, deleted) through the task API, as containerd would,
// and checks that State reports it.
func toState(t *testing.T, s *service, pod *fakePod, ctx context.Context, state string) {
	t.Helper()
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: cid, Bundle: testBundle(t)}); err != nil {
		t.Fatalf("create: %v", err)
	}
	want := task.Status_CREATED
	steps := map[string][]string{
		"created": nil, "running": {"start"}, "paused": {"start", "pause"},
		"stopped": {"start", "exit"}, "deleted": {"start", "exit", "delete"},
	}[state]
	for _, step := range steps {
		var err error
		switch step {
		case "start":
			_, err = s.Start(ctx, &taskAPI.StartRequest{ID: cid})
			want = task.Status_RUNNING
		case "pause":
			_, err = s.Pause(ctx, &taskAPI.PauseRequest{ID: cid})
			want = task.Status_PAUSED
		case "exit":
			pod.proc(cid + "/").end(3)
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var r *taskAPI.WaitResponse
			r, err = s.Wait(wctx, &taskAPI.WaitRequest{ID: cid})
			cancel()
			if err == nil && r.ExitStatus != 3 {
				t.Fatalf("exit status %d, want 3", r.ExitStatus)
			}
			want = task.Status_STOPPED
		case "delete":
			_, err = s.Delete(ctx, &taskAPI.DeleteRequest{ID: cid})
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	st, err := s.State(ctx, &taskAPI.StateRequest{ID: cid})
	if state == "deleted" {
		if classOf(err) != notFound {
			t.Fatalf("State of a deleted task: %v, want NotFound", err)
		}
		return
	}
	if err != nil || st.Status != want || st.Pid != 4242 {
		t.Fatalf("State in %s: %v, %v, pid %d; want %v, the VMM's pid", state, err, st.GetStatus(), st.GetPid(), want)
	}
}

func anyOf(t *testing.T, v any) *taskAPI.UpdateTaskRequest {
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return &taskAPI.UpdateTaskRequest{ID: cid, Resources: a}
}

// TestTaskVerbsInEveryState calls every task API verb on a task in every
// state, with a fake pod VM, and checks containerd's error class: illegal
// operations are refused at once (FailedPrecondition), a deleted task is
// NotFound, and Kill of an exited process succeeds.
func TestTaskVerbsInEveryState(t *testing.T) {
	states := []string{"created", "running", "paused", "stopped", "deleted"}
	type verb func(t *testing.T, ctx context.Context, s *service) error
	verbs := []struct {
		name string
		call verb
		want map[string]class // by state; missing: ok
	}{
		{"Start", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Start(ctx, &taskAPI.StartRequest{ID: cid})
			return err
		}, map[string]class{"running": failedPrecondition, "paused": failedPrecondition, "stopped": failedPrecondition, "deleted": notFound}},
		{"Exec", func(t *testing.T, ctx context.Context, s *service) error {
			a, err := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"/bin/sh"}, Cwd: "/"})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: cid, ExecID: "e1", Spec: a})
			return err
		}, map[string]class{"paused": failedPrecondition, "stopped": failedPrecondition, "deleted": notFound}},
		{"Kill", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Kill(ctx, &taskAPI.KillRequest{ID: cid, Signal: 9})
			return err
		}, map[string]class{"deleted": notFound}},
		{"Wait", func(t *testing.T, ctx context.Context, s *service) error {
			ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			_, err := s.Wait(ctx, &taskAPI.WaitRequest{ID: cid})
			return err
		}, map[string]class{"created": deadline, "running": deadline, "paused": deadline, "deleted": notFound}},
		{"Pause", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Pause(ctx, &taskAPI.PauseRequest{ID: cid})
			return err
		}, map[string]class{"created": failedPrecondition, "paused": failedPrecondition, "stopped": failedPrecondition, "deleted": notFound}},
		{"Resume", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Resume(ctx, &taskAPI.ResumeRequest{ID: cid})
			return err
		}, map[string]class{"created": failedPrecondition, "running": failedPrecondition, "stopped": failedPrecondition, "deleted": notFound}},
		{"Delete", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: cid})
			return err
		}, map[string]class{"running": failedPrecondition, "paused": failedPrecondition, "deleted": notFound}},
		{"State", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.State(ctx, &taskAPI.StateRequest{ID: cid})
			return err
		}, map[string]class{"deleted": notFound}},
		{"Pids", func(t *testing.T, ctx context.Context, s *service) error {
			r, err := s.Pids(ctx, &taskAPI.PidsRequest{ID: cid})
			if err == nil && (len(r.Processes) != 1 || r.Processes[0].Pid != 4242) {
				t.Errorf("Pids %v, want the VMM's pid only", r.Processes)
			}
			return err
		}, map[string]class{"deleted": notFound}},
		{"ResizePty", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.ResizePty(ctx, &taskAPI.ResizePtyRequest{ID: cid, Width: 80, Height: 24})
			return err
		}, map[string]class{"deleted": notFound}},
		{"CloseIO", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.CloseIO(ctx, &taskAPI.CloseIORequest{ID: cid, Stdin: true})
			return err
		}, map[string]class{"deleted": notFound}},
		{"Update", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Update(ctx, anyOf(t, &specs.LinuxResources{}))
			return err
		}, map[string]class{"stopped": failedPrecondition, "deleted": notFound}},
		{"Stats", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Stats(ctx, &taskAPI.StatsRequest{ID: cid})
			return err
		}, map[string]class{"deleted": notFound}},
		{"Connect", func(t *testing.T, ctx context.Context, s *service) error {
			r, err := s.Connect(ctx, &taskAPI.ConnectRequest{ID: cid})
			if err == nil && r.ShimPid == 0 {
				t.Error("Connect: no shim pid")
			}
			return err
		}, nil},
		{"Shutdown", func(t *testing.T, ctx context.Context, s *service) error {
			_, err := s.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: cid})
			return err
		}, nil},
	}
	for _, v := range verbs {
		for _, state := range states {
			t.Run(v.name+"/"+state, func(t *testing.T) {
				s, pod, ctx := newTestService(t)
				toState(t, s, pod, ctx, state)
				want := v.want[state]
				start := time.Now()
				err := v.call(t, ctx, s)
				if got := classOf(err); got != want {
					t.Fatalf("%s on a %s task: %v (%v), want %v", v.name, state, got, err, want)
				}
				// Refusals are immediate: nothing waits on the guest.
				if want == failedPrecondition && time.Since(start) > time.Second {
					t.Errorf("refusal took %v", time.Since(start))
				}
			})
		}
	}
}

// TestKillRunningTaskReportsExit: Kill reaches the guest process, and its
// exit (128+signal) is what Wait and State then report.
func TestKillRunningTaskReportsExit(t *testing.T) {
	s, pod, ctx := newTestService(t)
	toState(t, s, pod, ctx, "running")
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: cid, Signal: 15}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := s.Wait(wctx, &taskAPI.WaitRequest{ID: cid})
	if err != nil || r.ExitStatus != 128+15 {
		t.Fatalf("Wait: %v, status %d, want 143", err, r.GetExitStatus())
	}
	// Again, now that it has exited: CRI retries kills.
	if _, err := s.Kill(ctx, &taskAPI.KillRequest{ID: cid, Signal: 9}); err != nil {
		t.Errorf("Kill of an exited task: %v", err)
	}
}

// TestVMDeathStopsEveryProcess: when the pod's VM ends on its own, every
// process is reported exited (137) and the task can be deleted.
func TestVMDeathStopsEveryProcess(t *testing.T) {
	s, pod, ctx := newTestService(t)
	toState(t, s, pod, ctx, "running")
	pod.Destroy(ctx)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := s.Wait(wctx, &taskAPI.WaitRequest{ID: cid})
	if err != nil || r.ExitStatus != exitStatusVMGone {
		t.Fatalf("Wait after VM death: %v, status %d, want %d", err, r.GetExitStatus(), exitStatusVMGone)
	}
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: cid}); err != nil {
		t.Errorf("Delete after VM death: %v", err)
	}
}

// TestExecStates walks an exec through created, running, stopped and
// deleted, checking each verb's class on the way.
func TestExecStates(t *testing.T) {
	s, pod, ctx := newTestService(t)
	toState(t, s, pod, ctx, "running")
	spec, err := typeurl.MarshalAnyToProto(&specs.Process{Args: []string{"/bin/sh"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	exec := func() error {
		_, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: cid, ExecID: "e1", Spec: spec})
		return err
	}
	state := func() (task.Status, error) {
		r, err := s.State(ctx, &taskAPI.StateRequest{ID: cid, ExecID: "e1"})
		return r.GetStatus(), err
	}
	expect := func(what string, err error, want class) {
		t.Helper()
		if got := classOf(err); got != want {
			t.Fatalf("%s: %v (%v), want %v", what, got, err, want)
		}
	}
	expect("exec", exec(), ok)
	if err := exec(); !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		t.Fatalf("second exec with the same id: %v, want AlreadyExists", err)
	}
	if st, err := state(); err != nil || st != task.Status_CREATED {
		t.Fatalf("State of a new exec: %v, %v", st, err)
	}
	_, err = s.Start(ctx, &taskAPI.StartRequest{ID: cid, ExecID: "e1"})
	expect("start exec", err, ok)
	_, err = s.Start(ctx, &taskAPI.StartRequest{ID: cid, ExecID: "e1"})
	expect("start a running exec", err, failedPrecondition)
	_, err = s.Delete(ctx, &taskAPI.DeleteRequest{ID: cid, ExecID: "e1"})
	expect("delete a running exec", err, failedPrecondition)
	_, err = s.Kill(ctx, &taskAPI.KillRequest{ID: cid, ExecID: "e1", Signal: 9})
	expect("kill exec", err, ok)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := s.Wait(wctx, &taskAPI.WaitRequest{ID: cid, ExecID: "e1"})
	if err != nil || r.ExitStatus != 137 {
		t.Fatalf("Wait exec: %v, %d", err, r.GetExitStatus())
	}
	if st, err := state(); err != nil || st != task.Status_STOPPED {
		t.Fatalf("State of an exited exec: %v, %v", st, err)
	}
	_, err = s.Kill(ctx, &taskAPI.KillRequest{ID: cid, ExecID: "e1", Signal: 9})
	expect("kill an exited exec", err, ok)
	_, err = s.Delete(ctx, &taskAPI.DeleteRequest{ID: cid, ExecID: "e1"})
	expect("delete exec", err, ok)
	_, err = state()
	expect("state of a deleted exec", err, notFound)
	// The init still runs.
	st, err := s.State(ctx, &taskAPI.StateRequest{ID: cid})
	if err != nil || st.Status != task.Status_RUNNING {
		t.Fatalf("init after its exec: %v, %v", st.GetStatus(), err)
	}
}

// TestDeleteAsksTheGuestOnlyWhileThePodGoesOn: deleting a container of a
// pod that keeps running asks the guest to delete it; deleting the pod's
// sandbox container, after which the VM is destroyed and its agent's
// Shutdown kills what is left, undoes only the host's side.
func TestDeleteAsksTheGuestOnlyWhileThePodGoesOn(t *testing.T) {
	s, pod, ctx := newTestService(t)
	toState(t, s, pod, ctx, "stopped") // cid: the pod's sandbox container
	bundle := t.TempDir()
	writeBundle(t, bundle, cid)
	os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755)
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "app", Bundle: bundle}); err != nil {
		t.Fatalf("create a container in the pod: %v", err)
	}
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "app"}); err != nil {
		t.Fatal(err)
	}
	if !pod.called("delete app") || pod.called("release app") {
		t.Errorf("a container deleted from a running pod was not deleted in the guest")
	}
	if isDone(pod.Done()) {
		t.Fatal("the VM ended with its sandbox container still there")
	}
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: cid}); err != nil {
		t.Fatal(err)
	}
	if !pod.called("release "+cid) || pod.called("delete "+cid) {
		t.Errorf("the sandbox container was deleted in the guest, or not released on the host")
	}
	if !isDone(pod.Done()) {
		t.Error("the VM outlived its sandbox container")
	}
}
