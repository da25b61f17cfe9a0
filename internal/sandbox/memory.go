package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/memory"
	"github.com/berth-runtime/berth/internal/vmm"
)

// virtioMemID is the id of a sandbox's virtio-mem device.
const virtioMemID = "vmem0"

// MemoryStatus is a sandbox's memory as `berth status` reports it.
type MemoryStatus struct {
	Mechanism memory.Mechanism `json:"mechanism"`
	// GuestAtBootMiB is what the VM booted with.
	GuestAtBootMiB int `json:"guestAtBootMiB"`
	// MaxGuestMiB is the ceiling it can grow to.
	MaxGuestMiB int `json:"maxGuestMiB"`
	// GuestRequestedMiB is what was last asked for.
	GuestRequestedMiB int `json:"guestRequestedMiB"`
	// GuestCurrentMiB is what the VM has now (boot + plugged).
	GuestCurrentMiB int `json:"guestCurrentMiB"`
	// GuestMemTotalMiB is what the guest kernel reports (MemTotal): less
	// than GuestCurrentMiB by the kernel's own reservations.
	GuestMemTotalMiB int `json:"guestMemTotalMiB"`
	// GuestMovableMiB is the part that can be unplugged again.
	GuestMovableMiB int `json:"guestMovableMiB"`
	// BlocksOffline counts hot-added blocks the guest has not onlined.
	BlocksOffline int `json:"blocksOffline"`
	// AutoOnlineBlocks is the guest kernel's own policy (diagnostics).
	AutoOnlineBlocks string   `json:"autoOnlineBlocks"`
	Errors           []string `json:"errors,omitempty"`
	// Elastic is the elastic memory controller (elastic.go).
	Elastic *ElasticStatus `json:"elastic,omitempty"`
}

// memoryState is the sandbox's side of memory hot-plug.
type memoryState struct {
	mu     sync.Mutex // one resize at a time
	limits memory.Limits
	hp     vmm.MemoryHotplugger // nil without hot-plug (limits.Mechanism none)
	// bootMemTotalMiB is the guest's MemTotal at boot: what it reports
	// for BootMiB of RAM.
	bootMemTotalMiB int
	requestedMiB    int
	currentMiB      int
	dimms           []vmm.DIMM
	nextDIMM        int
}

func mechanismOf(cfg *config.Config) memory.Mechanism {
	switch cfg.ResolvedMemoryHotplug() {
	case config.MemoryHotplugVirtioMem:
		return memory.VirtioMem
	case config.MemoryHotplugDIMM:
		return memory.DIMM
	}
	return memory.None
}

// memoryLayout fills the machine's hot-plug fields and returns the limits.
func memoryLayout(cfg *config.Config, m *vmm.Spec) memory.Limits {
	l := memory.Limits{Mechanism: mechanismOf(cfg), BootMiB: m.MemoryMiB, MaxMiB: m.MemoryMiB}
	if l.Mechanism == memory.None {
		return l
	}
	l.MaxMiB = max(cfg.Hypervisor.DefaultMaxMemoryMiB, m.MemoryMiB)
	if l.MaxMiB == m.MemoryMiB {
		l.Mechanism = memory.None
		return l
	}
	m.MaxMemoryMiB = l.MaxMiB
	switch l.Mechanism {
	case memory.VirtioMem:
		region := (l.MaxMiB - l.BootMiB) / memory.VirtioMemBlockMiB * memory.VirtioMemBlockMiB
		m.VirtioMem = &vmm.VirtioMem{ID: virtioMemID, RegionMiB: region, BlockMiB: memory.VirtioMemBlockMiB}
	case memory.DIMM:
		m.MemorySlots = cfg.Hypervisor.MemorySlots
		l.Slots = cfg.Hypervisor.MemorySlots
	}
	return l
}

// resizeTimeout bounds one step: the guest onlines block by block, which
// under software emulation takes seconds per GiB.
func resizeTimeout(deltaMiB int) time.Duration {
	if deltaMiB < 0 {
		deltaMiB = -deltaMiB
	}
	return 30*time.Second + time.Duration(deltaMiB)*15*time.Second/1024
}

// ErrPartialResize says a resize stopped short; the sandbox is consistent
// at the size MemoryStatus reports.
var ErrPartialResize = errors.New("resize stopped short")

// ResizeMemory brings the VM to targetMiB: it validates first (a refused
// request changes nothing), then plugs or unplugs memory and returns once
// the guest can use it, or fails saying what the guest reported.
func (s *Sandbox) ResizeMemory(ctx context.Context, targetMiB int) (MemoryStatus, error) {
	s.memory.mu.Lock()
	defer s.memory.mu.Unlock()
	return s.resizeMemoryLocked(ctx, targetMiB)
}

func (s *Sandbox) resizeMemoryLocked(ctx context.Context, targetMiB int) (MemoryStatus, error) {
	m := &s.memory
	avail, err := hostAvailableMiB()
	if err != nil {
		return s.memoryStatusLocked(ctx), err
	}
	if err := memory.Check(m.limits, m.currentMiB, targetMiB, avail); err != nil {
		return s.memoryStatusLocked(ctx), fmt.Errorf("resize sandbox %s: %w", s.id, classified{err, errdefs.ErrInvalidArgument})
	}
	m.requestedMiB = targetMiB
	// The host cgroup's memory limit moves with the VM: up before the
	// guest may use more, down once it has given memory back.
	if targetMiB > m.currentMiB {
		if err := s.SetVMMemory(ctx, targetMiB); err != nil {
			return s.memoryStatusLocked(ctx), fmt.Errorf("raise the sandbox cgroup's memory limit: %w", err)
		}
	}
	switch {
	case targetMiB == m.currentMiB:
	case m.limits.Mechanism == memory.VirtioMem:
		err = s.resizeVirtioMem(ctx, targetMiB)
	case m.limits.Mechanism == memory.DIMM:
		err = s.resizeDIMM(ctx, targetMiB)
	}
	// Also when ctx is done: the cgroup follows the size the VM has.
	if cerr := s.SetVMMemory(context.WithoutCancel(ctx), m.currentMiB); cerr != nil && err == nil {
		err = fmt.Errorf("set the sandbox cgroup's memory limit: %w", cerr)
	}
	return s.memoryStatusLocked(ctx), err
}

// shrinkSettle is how long a virtio-mem shrink waits without progress
// before it settles where the guest got to. The guest's driver unplugs
// what it can in one pass and retries a failed unplug only 50 s later
// (VIRTIO_MEM_RETRY_TIMER_MIN_MS in Linux 6.1), so a longer wait gains
// nothing: it only holds the resize, and with it the next container's
// grow. Measured here under TCG: the 8 GiB to 256 MiB shrink of
// TestMemoryGrow8GiBAtOnce completes within it.
const shrinkSettle = 3 * time.Second

func (s *Sandbox) resizeVirtioMem(ctx context.Context, targetMiB int) error {
	m := &s.memory
	boot := m.limits.BootMiB
	for m.currentMiB < targetMiB {
		// Grow in steps the guest can pay the page structures for.
		info, err := s.agent.OnlineMemory(ctx, &emptypb.Empty{})
		if err != nil {
			return s.rpcError("read guest memory", err)
		}
		step := min(targetMiB, m.currentMiB+memory.MaxStepMiB(int(info.KernelFreeBytes>>20), memory.VirtioMemBlockMiB))
		reached, err := m.hp.ResizeVirtioMem(ctx, virtioMemID, step-boot, 20*time.Second)
		if reached > 0 || err == nil {
			m.currentMiB = boot + reached
		}
		if err != nil {
			return fmt.Errorf("grow virtio-mem to %d MiB: %w", step, err)
		}
		if m.currentMiB < step {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("grow to %d MiB stopped at %d MiB: %w", targetMiB, m.currentMiB, err)
			}
			return fmt.Errorf("grow to %d MiB: the guest plugged only %d MiB: %w", targetMiB, m.currentMiB, ErrPartialResize)
		}
		if err := s.waitGuestSees(ctx, m.currentMiB); err != nil {
			return err
		}
	}
	if m.currentMiB > targetMiB {
		reached, err := m.hp.ResizeVirtioMem(ctx, virtioMemID, targetMiB-boot, shrinkSettle)
		if err != nil {
			return fmt.Errorf("shrink virtio-mem to %d MiB: %w", targetMiB, err)
		}
		m.currentMiB = boot + reached
		if m.currentMiB > targetMiB {
			// Stop the driver from retrying forever: settle where the
			// guest got to, also when the caller stopped waiting (a
			// grow preempts the shim's shrink), so that the device's
			// request and the bookkeeping agree. Containers keep running.
			m.hp.ResizeVirtioMem(context.WithoutCancel(ctx), virtioMemID, reached, time.Second)
			m.requestedMiB = m.currentMiB
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("shrink to %d MiB stopped at %d MiB: %w", targetMiB, m.currentMiB, err)
			}
			return fmt.Errorf("shrink to %d MiB reached %d MiB: the guest could not free more (memory in use): %w", targetMiB, m.currentMiB, ErrPartialResize)
		}
	}
	return nil
}

func (s *Sandbox) resizeDIMM(ctx context.Context, targetMiB int) error {
	m := &s.memory
	if targetMiB > m.currentMiB {
		info, err := s.agent.OnlineMemory(ctx, &emptypb.Empty{})
		if err != nil {
			return s.rpcError("read guest memory", err)
		}
		sizes, err := memory.DIMMSizes(targetMiB-m.currentMiB, m.limits.Slots-len(m.dimms),
			memory.MaxStepMiB(int(info.KernelFreeBytes>>20), memory.DIMMAlignMiB))
		if err != nil {
			return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		for _, size := range sizes {
			d := vmm.DIMM{ID: "dimm" + strconv.Itoa(m.nextDIMM), SizeMiB: size}
			if err := m.hp.PlugDIMM(ctx, d); err != nil {
				return err
			}
			m.nextDIMM++
			m.dimms = append(m.dimms, d)
			m.currentMiB += size
			if err := s.waitGuestSees(ctx, m.currentMiB); err != nil {
				return err
			}
		}
		return nil
	}
	// Shrink by whole DIMMs, newest first, while that stays >= target.
	// A DIMM holding kernel memory can never be ejected: the guest would
	// ignore the request and QEMU would wait forever. Ask the guest first,
	// and pass over such a DIMM to the older ones: which DIMM the guest
	// had to online as kernel memory depends on its free kernel memory
	// while the blocks arrived (with Berth's kernel it is often the newest).
	var stuck error
	for i := len(m.dimms) - 1; i >= 0; i-- {
		d := m.dimms[i]
		if m.currentMiB-d.SizeMiB < targetMiB {
			continue
		}
		if err := ctx.Err(); err != nil {
			// The caller stopped waiting (a grow preempts the shim's
			// shrink): stop between DIMMs, never in an unplug.
			m.requestedMiB = m.currentMiB
			return fmt.Errorf("shrink to %d MiB stopped at %d MiB: %w", targetMiB, m.currentMiB, err)
		}
		if err := s.dimmRemovable(ctx, d); err != nil {
			stuck = err
			continue
		}
		// Not cancelled with ctx: an ejection QEMU has begun completes
		// in the guest anyway, and the DIMM list must say so.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resizeTimeout(d.SizeMiB))
		err := m.hp.UnplugDIMM(uctx, d.ID)
		cancel()
		if err != nil {
			m.requestedMiB = m.currentMiB
			return fmt.Errorf("shrink to %d MiB reached %d MiB: %v: %w", targetMiB, m.currentMiB, err, ErrPartialResize)
		}
		m.dimms = slices.Delete(m.dimms, i, i+1)
		m.currentMiB -= d.SizeMiB
	}
	if m.currentMiB != targetMiB && stuck != nil {
		m.requestedMiB = m.currentMiB
		return fmt.Errorf("shrink to %d MiB reached %d MiB: %v: %w", targetMiB, m.currentMiB, stuck, ErrPartialResize)
	}
	if m.currentMiB != targetMiB {
		m.requestedMiB = m.currentMiB
		return fmt.Errorf("shrink to %d MiB reached %d MiB: DIMMs are removed whole: %w", targetMiB, m.currentMiB, ErrPartialResize)
	}
	return nil
}

// dimmRemovable reports an error if any memory block of DIMM d is online
// as kernel memory in the guest.
func (s *Sandbox) dimmRemovable(ctx context.Context, d vmm.DIMM) error {
	addr, size, err := s.memory.hp.MemoryDeviceRange(ctx, d.ID)
	if err != nil {
		return err
	}
	info, err := s.agent.OnlineMemory(ctx, &emptypb.Empty{})
	if err != nil {
		return s.rpcError("read guest memory", err)
	}
	if info.BlockSizeBytes == 0 {
		return nil
	}
	first, last := addr/info.BlockSizeBytes, (addr+size-1)/info.BlockSizeBytes
	for _, b := range info.KernelBlocks {
		if b >= first && b <= last {
			return fmt.Errorf("dimm %s holds kernel memory (block %d is not movable), which the guest cannot give back", d.ID, b)
		}
	}
	return nil
}

// waitGuestSees waits until the guest kernel reports the memory the VM now
// has (its boot MemTotal plus what was plugged), onlining as it goes.
func (s *Sandbox) waitGuestSees(ctx context.Context, currentMiB int) error {
	m := &s.memory
	want := m.bootMemTotalMiB + currentMiB - m.limits.BootMiB
	// The kernel keeps a little of hot-added memory for itself.
	slack := want/100 + 4
	deadline := time.Now().Add(resizeTimeout(currentMiB - m.limits.BootMiB))
	var info *api.MemoryInfo
	for {
		var err error
		info, err = s.agent.OnlineMemory(ctx, &emptypb.Empty{})
		if err != nil {
			return s.rpcError("online guest memory", err)
		}
		if int(info.MemTotalBytes>>20) >= want-slack {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("the guest does not use the added memory: it reports MemTotal %d MiB, expected about %d MiB; %d blocks offline (auto_online_blocks=%s) %s",
		info.MemTotalBytes>>20, want, info.BlocksOffline, info.AutoOnlineBlocks, strings.Join(info.Errors, "; "))
}

// MemoryStatus reports the sandbox's memory, the guest's view included
// (one agent round trip).
func (s *Sandbox) MemoryStatus(ctx context.Context) MemoryStatus {
	s.memory.mu.Lock()
	defer s.memory.mu.Unlock()
	return s.memoryStatusLocked(ctx)
}

// Limits are the status's mechanism, boot size and ceiling, the bounds
// memory.Target and memory.ShrinkFloorMiB size within. DIMM slots are not
// part of the status and stay 0.
func (st MemoryStatus) Limits() memory.Limits {
	return memory.Limits{Mechanism: st.Mechanism, BootMiB: st.GuestAtBootMiB, MaxMiB: st.MaxGuestMiB}
}

// GuestAvailableMiB is the guest's MemAvailable, bounded by the VM's
// size (memory.Sanitize). It costs the agent round trip HostMemoryStatus
// avoids; a shrink, which it bounds, is rare and not on a create's path.
func (s *Sandbox) GuestAvailableMiB(ctx context.Context) (int, error) {
	info, err := s.agent.OnlineMemory(ctx, &emptypb.Empty{})
	if err != nil {
		return 0, s.rpcError("read guest memory", err)
	}
	_, avail, _, _ := memory.Sanitize(s.HostMemoryStatus().GuestCurrentMiB, info.MemTotalBytes, info.MemAvailableBytes, 0, 0)
	return avail, nil
}

// HostMemoryStatus is MemoryStatus with only the host's bookkeeping: the
// mechanism, the boot size, the ceiling and what was requested and
// plugged. Sizing the VM for a container needs no more, and the guest's
// view costs an agent round trip in which the guest reads every memory
// block's sysfs files (~25 ms under TCG), and a container create sizes
// the VM twice (its own fit check and the elastic bounds).
func (s *Sandbox) HostMemoryStatus() MemoryStatus {
	s.memory.mu.Lock()
	defer s.memory.mu.Unlock()
	return s.hostMemoryStatusLocked()
}

func (s *Sandbox) hostMemoryStatusLocked() MemoryStatus {
	m := &s.memory
	return MemoryStatus{
		Mechanism: m.limits.Mechanism, GuestAtBootMiB: m.limits.BootMiB, MaxGuestMiB: m.limits.MaxMiB,
		GuestRequestedMiB: m.requestedMiB, GuestCurrentMiB: m.currentMiB,
	}
}

func (s *Sandbox) memoryStatusLocked(ctx context.Context) MemoryStatus {
	st := s.hostMemoryStatusLocked()
	if s.elastic != nil {
		es := s.ElasticStatus()
		st.Elastic = &es
	}
	if s.agent == nil {
		return st
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if info, err := s.agent.OnlineMemory(sctx, &emptypb.Empty{}); err == nil {
		st.GuestMemTotalMiB = int(info.MemTotalBytes >> 20)
		st.GuestMovableMiB = int(info.MovableBytes >> 20)
		st.BlocksOffline = int(info.BlocksOffline)
		st.AutoOnlineBlocks = info.AutoOnlineBlocks
		st.Errors = info.Errors
	} else {
		st.Errors = append(st.Errors, "guest agent: "+err.Error())
	}
	return st
}

// hostAvailableMiB reads the host's MemAvailable.
func hostAvailableMiB() (int, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kib, err := strconv.Atoi(f[0])
				return kib >> 10, err
			}
		}
	}
	return 0, errors.New("no MemAvailable in /proc/meminfo")
}

// classified keeps an error's message and adds a classification.
type classified struct {
	err  error
	kind error
}

func (c classified) Error() string   { return c.err.Error() }
func (c classified) Unwrap() []error { return []error{c.err, c.kind} }
