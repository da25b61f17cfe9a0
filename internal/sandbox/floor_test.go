package sandbox

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestMemoryFloor(t *testing.T) {
	s := &Sandbox{}
	if err := s.checkMemoryFloor(128); err != nil {
		t.Fatalf("no floor: %v", err)
	}
	s.SetMemoryFloor(func() int { return 1024 })
	if err := s.checkMemoryFloor(768); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "memory limits") {
		t.Fatalf("below the floor: %v", err)
	}
	for _, ok := range []int{1024, 2048} {
		if err := s.checkMemoryFloor(ok); err != nil {
			t.Fatalf("%d MiB: %v", ok, err)
		}
	}
}
