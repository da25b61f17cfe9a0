package shim

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"

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
