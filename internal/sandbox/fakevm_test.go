package sandbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/vmm"
)

// fakeGuest is one fake guest seen by a fake driver's VM (fakeGuest
// itself: it plugs memory) and a fake agent (fakeAgent: it reports what
// the guest kernel sees). It lets the sandbox's memory code run without
// QEMU.
type fakeGuest struct {
	mu   sync.Mutex
	done chan struct{}
	// bootMemTotalMiB is MemTotal at boot; pluggedMiB what was added.
	bootMemTotalMiB, pluggedMiB int
	// minVirtioMemMiB is the least virtio-mem the guest can shrink to
	// (memory in use).
	minVirtioMemMiB int
	dimms           []vmm.DIMM
	// kernelDIMMs are DIMMs holding kernel memory (not removable).
	kernelDIMMs map[string]bool
	calls       []string
}

func newFakeGuest(bootMemTotalMiB int) *fakeGuest {
	return &fakeGuest{done: make(chan struct{}), bootMemTotalMiB: bootMemTotalMiB, kernelDIMMs: map[string]bool{}}
}

var (
	_ vmm.VM               = (*fakeGuest)(nil)
	_ vmm.MemoryHotplugger = (*fakeGuest)(nil)
)

func (g *fakeGuest) Pid() int                       { return 1 }
func (g *fakeGuest) Done() <-chan struct{}          { return g.done }
func (g *fakeGuest) ExitError() error               { return nil }
func (g *fakeGuest) Shutdown(context.Context) error { return g.Kill() }
func (g *fakeGuest) Kill() error                    { close(g.done); return nil }

func (g *fakeGuest) record(f string, a ...any) { g.calls = append(g.calls, fmt.Sprintf(f, a...)) }

// dimmAddr places the i-th DIMM at 4 GiB + i GiB.
func (g *fakeGuest) dimmAddr(i int) uint64 { return uint64(4<<30 + i*(1<<30)) }

const fakeBlockBytes = 128 << 20

func indexOf(ds []vmm.DIMM, id string) int {
	for i, d := range ds {
		if d.ID == id {
			return i
		}
	}
	return -1
}

func (g *fakeGuest) ResizeVirtioMem(_ context.Context, id string, sizeMiB int, _ time.Duration) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.record("virtio-mem %s %d", id, sizeMiB)
	g.pluggedMiB = max(sizeMiB, min(g.minVirtioMemMiB, g.pluggedMiB))
	return g.pluggedMiB, nil
}

func (g *fakeGuest) PlugDIMM(_ context.Context, d vmm.DIMM) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.record("plug %s %d", d.ID, d.SizeMiB)
	g.dimms = append(g.dimms, d)
	g.pluggedMiB += d.SizeMiB
	return nil
}

func (g *fakeGuest) UnplugDIMM(_ context.Context, id string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.record("unplug %s", id)
	i := indexOf(g.dimms, id)
	if i < 0 {
		return fmt.Errorf("no dimm %s", id)
	}
	g.pluggedMiB -= g.dimms[i].SizeMiB
	g.dimms = append(g.dimms[:i], g.dimms[i+1:]...)
	return nil
}

func (g *fakeGuest) MemoryDeviceRange(_ context.Context, id string) (uint64, uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	i := indexOf(g.dimms, id)
	if i < 0 {
		return 0, 0, fmt.Errorf("no dimm %s", id)
	}
	return g.dimmAddr(i), uint64(g.dimms[i].SizeMiB) << 20, nil
}

// fakeAgent is the agent of a fakeGuest. Only what the tests use is
// implemented; the embedded nil AgentService makes any other call panic,
// which fails the test that made it.
type fakeAgent struct {
	api.AgentService
	g *fakeGuest
}

// OnlineMemory is the agent's view: everything plugged is online.
func (a fakeAgent) OnlineMemory(context.Context, *emptypb.Empty) (*api.MemoryInfo, error) {
	g := a.g
	g.mu.Lock()
	defer g.mu.Unlock()
	info := &api.MemoryInfo{
		MemTotalBytes:   uint64(g.bootMemTotalMiB+g.pluggedMiB) << 20,
		KernelFreeBytes: 180 << 20,
		BlockSizeBytes:  fakeBlockBytes,
	}
	for i, d := range g.dimms {
		if g.kernelDIMMs[d.ID] {
			info.KernelBlocks = append(info.KernelBlocks, g.dimmAddr(i)/fakeBlockBytes)
		}
	}
	return info, nil
}

// memCgroup is a sandbox cgroup that records its memory limit.
type memCgroup struct {
	cgroup.Cgroup
	mu          sync.Mutex
	memoryBytes int64
}

func (c *memCgroup) Update(_ context.Context, l cgroup.Limits) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.memoryBytes = l.MemoryBytes
	return nil
}
