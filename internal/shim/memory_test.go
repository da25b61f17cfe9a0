package shim

import (
	"context"
	"strings"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// TestLimitFits: a container limit the VM cannot give even alone is an
// error naming hypervisor.default_maxmemory (it used to be clamped).
func TestLimitFits(t *testing.T) {
	st := sandbox.MemoryStatus{GuestAtBootMiB: 256, MaxGuestMiB: 16384}
	for _, tc := range []struct {
		name     string
		limit    int64
		overhead int
		ok       bool
	}{
		{"no limit", 0, 128, true},
		{"small", 512 << 20, 128, true},
		{"exactly fits", int64(16384-256-128) << 20, 128, true},
		{"one MiB over", int64(16384-256-128+1) << 20, 128, false},
		{"32 GiB", 32 << 30, 0, false},
	} {
		err := limitFits(st, tc.overhead, "c1", tc.limit)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "hypervisor.default_maxmemory")) {
			t.Errorf("%s: %v: want InvalidArgument naming hypervisor.default_maxmemory", tc.name, err)
		}
	}
}

// writeLimitedBundle writes the bundle of a container of pod sandboxID
// with a memory limit.
func writeLimitedBundle(t *testing.T, sandboxID string, limitBytes int64) string {
	t.Helper()
	return specBundle(t, specs.Spec{Version: specs.Version, Root: &specs.Root{Path: "rootfs"}, Process: &specs.Process{Args: []string{"true"}},
		Annotations: map[string]string{oci.SandboxIDAnnotations[0]: sandboxID, oci.ContainerTypeAnnotations[0]: "container"},
		Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limitBytes}},
			Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}}})
}

// deleteDuringAStuckShrink makes a pod whose 1 GiB container has been
// deleted while the guest cannot give its memory back: the shrink after
// the delete waits at pod.mem.shrinkGate, and the delete must have
// replied anyway. It returns the memory overhead per VM.
func deleteDuringAStuckShrink(t *testing.T, s *service, pod *fakePod, ctx context.Context) (overhead int) {
	t.Helper()
	pod.mem = &fakeMemory{current: 256}
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: cid, Bundle: testBundle(t)}); err != nil {
		t.Fatalf("create the sandbox container: %v", err)
	}
	overhead = config.Default().Hypervisor.MemoryOverheadMiB
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "big", Bundle: writeLimitedBundle(t, cid, 1<<30)}); err != nil {
		t.Fatalf("create a 1 GiB container: %v", err)
	}
	if got, want := pod.mem.currentMiB(), 256+overhead+1024; got != want {
		t.Fatalf("VM at %d MiB with a 1 GiB container, want %d", got, want)
	}

	gate := make(chan struct{})
	pod.mem.shrinkGate = gate
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	})
	deleted := inBackground(func() error {
		_, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "big"})
		return err
	})
	replyWithin(t, deleted, 5*time.Second, "delete", "Delete waited for the VM to shrink")
	return overhead
}

// inBackground runs call in a goroutine and returns its error's channel.
func inBackground(call func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- call() }()
	return done
}

// replyWithin fails the test unless done yields nil within limit: what
// names the call, late says what a late reply means.
func replyWithin(t *testing.T, done <-chan error, limit time.Duration, what, late string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(limit):
		t.Fatal(late)
	}
}

// waitForVMSize waits up to 5 s for the fake VM to reach want MiB.
func waitForVMSize(t *testing.T, pod *fakePod, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for pod.mem.currentMiB() != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := pod.mem.currentMiB(); got != want {
		t.Errorf("VM at %d MiB %s, want %d", got, what, want)
	}
}

// TestDeleteRepliesWhileTheVMShrinks: deleting a container replies while
// the VM is still giving its memory back (a guest whose memory is in use
// holds a shrink for seconds, and containerd's exit handler, which
// deletes the task and which CRI's StopContainer waits for, gives up
// after 10 s). A container created meanwhile keeps the memory its limit
// needs, whichever of the shrink and its grow runs first.
func TestDeleteRepliesWhileTheVMShrinks(t *testing.T) {
	s, pod, ctx := newTestService(t)
	overhead := deleteDuringAStuckShrink(t, s, pod, ctx)
	created := make(chan error, 1)
	go func() {
		_, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "next", Bundle: writeLimitedBundle(t, cid, 512<<20)})
		created <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the create reach the VM's sizing
	close(pod.mem.shrinkGate)
	if err := <-created; err != nil {
		t.Fatalf("create a 512 MiB container during the shrink: %v", err)
	}
	waitForVMSize(t, pod, 256+overhead+512, "after the shrink and the 512 MiB container's grow (boot + overhead + its limit)")
}

// TestAGrowDoesNotWaitForAStuckShrink: a container created while the
// guest cannot give a deleted container's memory back does not wait for
// that shrink to settle: its grow preempts it. The shrink runs again
// after the grow, to a target that keeps the new container's memory.
func TestAGrowDoesNotWaitForAStuckShrink(t *testing.T) {
	s, pod, ctx := newTestService(t)
	overhead := deleteDuringAStuckShrink(t, s, pod, ctx)
	time.Sleep(50 * time.Millisecond) // let the shrink reach the guest
	created := inBackground(func() error {
		_, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "next", Bundle: writeLimitedBundle(t, cid, 2<<30)})
		return err
	})
	replyWithin(t, created, 2*time.Second, "create a 2 GiB container during the shrink", "the 2 GiB container's create waited for the stuck shrink")
	want := 256 + overhead + 2048
	if got := pod.mem.currentMiB(); got != want {
		t.Errorf("VM at %d MiB once the 2 GiB container is created, want %d (boot + overhead + its limit)", got, want)
	}
	close(pod.mem.shrinkGate)
	time.Sleep(100 * time.Millisecond) // the shrink that ran again, if any
	if got := pod.mem.currentMiB(); got != want {
		t.Errorf("VM at %d MiB after the shrink was let through, want %d", got, want)
	}
}

// TestAGrowPreemptsAShrinkStillWaitingForTheVMsSizing: a shrink that has
// not reached the VM yet (another resize holds the sizing lock) is
// preempted too: once the lock is free it gives way to the grow rather
// than start a shrink the guest cannot finish and hold the grow behind it.
func TestAGrowPreemptsAShrinkStillWaitingForTheVMsSizing(t *testing.T) {
	s, pod, ctx := newTestService(t)
	pod.mem = &fakeMemory{current: 256}
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: cid, Bundle: testBundle(t)}); err != nil {
		t.Fatalf("create the sandbox container: %v", err)
	}
	overhead := config.Default().Hypervisor.MemoryOverheadMiB
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "big", Bundle: writeLimitedBundle(t, cid, 1<<30)}); err != nil {
		t.Fatalf("create a 1 GiB container: %v", err)
	}
	gate := make(chan struct{})
	pod.mem.shrinkGate = gate // a shrink that reaches the VM never ends
	defer close(gate)

	s.sizeMu.Lock() // another resize in progress
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "big"}); err != nil {
		s.sizeMu.Unlock()
		t.Fatalf("delete: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.shrinkMu.Lock()
		waiting := len(s.shrinks)
		s.shrinkMu.Unlock()
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			s.sizeMu.Unlock()
			t.Fatal("the delete started no shrink")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the shrink queue on sizeMu
	created := inBackground(func() error {
		_, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "next", Bundle: writeLimitedBundle(t, cid, 2<<30)})
		return err
	})
	time.Sleep(20 * time.Millisecond) // let the create queue behind it
	s.sizeMu.Unlock()
	replyWithin(t, created, 2*time.Second, "create a 2 GiB container", "the 2 GiB container's create waited for a shrink that was still waiting to start when it arrived")
	if got, want := pod.mem.currentMiB(), 256+overhead+2048; got != want {
		t.Errorf("VM at %d MiB once the 2 GiB container is created, want %d (boot + overhead + its limit)", got, want)
	}
}
