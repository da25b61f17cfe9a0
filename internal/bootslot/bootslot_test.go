package bootslot

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestAcquireWaitsForAFreeSlot(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a, err := Acquire(ctx, dir, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Acquire(ctx, dir, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	waited := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		s, err := Acquire(ctx, dir, 2, func() { close(waited) })
		s.Release()
		got <- err
	}()
	select {
	case <-waited:
	case err := <-got:
		t.Fatalf("a third slot of two was granted (%v)", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the third Acquire neither waited nor returned")
	}
	a.Release()
	a.Release() // idempotent
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a released slot was not taken by the waiter")
	}
}

func TestAcquireEndsWithItsContext(t *testing.T) {
	dir := t.TempDir()
	s, err := Acquire(context.Background(), dir, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Acquire(ctx, dir, 1, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire with every slot held past its deadline = %v, want DeadlineExceeded", err)
	}
}

// A process killed while booting must not keep its slot: flock locks end
// with the process's last descriptor.
func TestSlotOfAKilledProcessIsFree(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("flock(1) not installed")
	}
	dir := t.TempDir()
	// One process holding the lock: the shell takes it on fd 9 (flock
	// locks belong to the open file, which the shell keeps) and becomes
	// the sleep.
	holder := exec.Command("sh", "-c", `exec 9>"$1" && flock 9 && exec sleep 60`, "sh", filepath.Join(dir, "slot-0"))
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := try(filepath.Join(dir, "slot-0"))
		if err != nil {
			t.Fatal(err)
		}
		if s == nil {
			break // the child holds it
		}
		s.Release()
		if time.Now().After(deadline) {
			t.Fatal("flock(1) never took the slot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	holder.Process.Kill()
	holder.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Acquire(ctx, dir, 1, nil)
	if err != nil {
		t.Fatalf("the killed holder's slot stayed taken: %v", err)
	}
	s.Release()
}
