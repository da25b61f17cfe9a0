package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/memory"
)

// TestResizeMemoryPlanner drives ResizeMemory against a fake driver's VM
// and a fake agent (fakevm_test.go): what is plugged, in which steps, what
// the sandbox then reports, and how a refusal or a guest that cannot give
// memory back ends.
func TestResizeMemoryPlanner(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mech  memory.Mechanism
		setup func(g *fakeGuest)
		steps []int // targets, in order; the last is checked
		want  int   // current MiB after the last step
		calls string
		err   error // class of the last step's error; nil: success
	}{
		{name: "virtio-mem grow", mech: memory.VirtioMem, steps: []int{1280}, want: 1280,
			calls: "virtio-mem vmem0 1024"},
		{name: "virtio-mem grow and shrink", mech: memory.VirtioMem, steps: []int{1280, 512}, want: 512,
			calls: "virtio-mem vmem0 1024; virtio-mem vmem0 256"},
		{name: "virtio-mem shrink stops where the guest is", mech: memory.VirtioMem,
			setup: func(g *fakeGuest) { g.minVirtioMemMiB = 512 }, steps: []int{1280, 256}, want: 768,
			calls: "virtio-mem vmem0 1024; virtio-mem vmem0 0; virtio-mem vmem0 512", err: ErrPartialResize},
		{name: "dimm grow", mech: memory.DIMM, steps: []int{768}, want: 768,
			calls: "plug dimm0 512"},
		{name: "dimm shrink newest first", mech: memory.DIMM, steps: []int{768, 1024, 256}, want: 256,
			calls: "plug dimm0 512; plug dimm1 256; unplug dimm1; unplug dimm0"},
		{name: "dimm holding kernel memory stays", mech: memory.DIMM,
			setup: func(g *fakeGuest) { g.kernelDIMMs["dimm0"] = true }, steps: []int{768, 256}, want: 768,
			calls: "plug dimm0 512", err: ErrPartialResize},
		{name: "dimm removed whole only", mech: memory.DIMM, steps: []int{768, 512}, want: 768,
			calls: "plug dimm0 512", err: ErrPartialResize},
		{name: "above the maximum", mech: memory.VirtioMem, steps: []int{8192}, want: 256, err: errdefs.ErrInvalidArgument},
		{name: "below boot", mech: memory.DIMM, steps: []int{128}, want: 256, err: errdefs.ErrInvalidArgument},
		{name: "unaligned dimm", mech: memory.DIMM, steps: []int{300}, want: 256, err: errdefs.ErrInvalidArgument},
		{name: "hot-plug off", mech: memory.None, steps: []int{512}, want: 256, err: errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGuest(200)
			if tc.setup != nil {
				tc.setup(g)
			}
			cg := &memCgroup{}
			s := &Sandbox{id: "planner", cfg: config.Default(), vmm: g, agent: fakeAgent{g: g}, cgroup: cg, cpu: map[string]cpuLimit{}}
			s.memory = memoryState{
				limits: memory.Limits{Mechanism: tc.mech, BootMiB: 256, MaxMiB: 4096, Slots: 4},
				hp:     g, bootMemTotalMiB: 200, currentMiB: 256, requestedMiB: 256,
			}
			var st MemoryStatus
			var err error
			for _, target := range tc.steps {
				st, err = s.ResizeMemory(context.Background(), target)
			}
			switch {
			case tc.err == nil && err != nil:
				t.Fatalf("resize: %v", err)
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Fatalf("resize: %v, want %v", err, tc.err)
			}
			if st.GuestCurrentMiB != tc.want {
				t.Errorf("current %d MiB, want %d", st.GuestCurrentMiB, tc.want)
			}
			if got := strings.Join(g.calls, "; "); got != tc.calls {
				t.Errorf("driver calls %q, want %q", got, tc.calls)
			}
			// The host cgroup follows what the VM has, never less.
			if want := s.cfg.SandboxMemoryLimitBytes(st.GuestCurrentMiB); tc.calls != "" && cg.memoryBytes != want {
				t.Errorf("cgroup memory limit %d, want %d", cg.memoryBytes, want)
			}
		})
	}
}
