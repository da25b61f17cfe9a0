// Package memory sizes a sandbox's VM: what it boots with, how far it may
// grow (KubeVirt's guest and maxGuest), what its containers need, and how a
// resize is validated and split into steps. It decides; it does not touch
// QEMU or the guest (internal/sandbox carries the plan out).
package memory

import (
	"errors"
	"fmt"
)

// Mechanism is how memory is hot-plugged.
type Mechanism string

const (
	// VirtioMem grows and shrinks a virtio-mem device in small blocks.
	VirtioMem Mechanism = "virtio-mem"
	// DIMM adds and removes ACPI memory modules (pc-dimm).
	DIMM Mechanism = "dimm"
	// None: the VM keeps its boot size.
	None Mechanism = "none"
)

// DIMMAlignMiB is the x86 Linux memory block size: a DIMM that is not a
// multiple of it leaves a tail the guest cannot online.
const DIMMAlignMiB = 128

// VirtioMemBlockMiB is the virtio-mem block size Berth uses: the smallest
// the Linux driver accepts on x86 (and on arm64 with 4 KiB pages).
const VirtioMemBlockMiB = 2

// ErrInvalid classifies a refused request; the sandbox is unchanged.
var ErrInvalid = errors.New("memory request refused")

// Limits are a sandbox's fixed memory bounds.
type Limits struct {
	Mechanism Mechanism
	BootMiB   int // memory the VM boots with (guestAtBoot)
	MaxMiB    int // ceiling (maxGuest)
	Slots     int // DIMM slots
}

// Align is the granularity of a mechanism.
func (l Limits) Align() int {
	switch l.Mechanism {
	case DIMM:
		return DIMMAlignMiB
	case VirtioMem:
		return VirtioMemBlockMiB
	}
	return 1
}

// Target is what a sandbox should have: its boot memory, plus the
// overhead, plus every container's limit (a container without a limit adds
// nothing), rounded up to the mechanism's block and clamped to the
// ceiling. Limits are in bytes, as OCI gives them.
func Target(l Limits, overheadMiB int, containerLimitsBytes []int64) int {
	t := l.BootMiB + overheadMiB
	for _, b := range containerLimitsBytes {
		if b > 0 {
			t += int((b + (1 << 20) - 1) >> 20)
		}
	}
	t = RoundUp(t-l.BootMiB, l.Align()) + l.BootMiB
	if t > l.MaxMiB {
		t = l.MaxMiB
	}
	return t
}

// RoundUp rounds n up to a multiple of align.
func RoundUp(n, align int) int {
	if align <= 1 {
		return n
	}
	return (n + align - 1) / align * align
}

// Check validates a resize from currentMiB to targetMiB before anything
// changes. hostAvailableMiB is the host's MemAvailable: a grow the host
// cannot back would only push the host into reclaim or its OOM killer.
func Check(l Limits, currentMiB, targetMiB, hostAvailableMiB int) error {
	switch {
	case l.Mechanism == None && targetMiB != l.BootMiB:
		return fmt.Errorf("%w: memory hot-plug is off for this sandbox (hypervisor.memory_hotplug = \"none\"); it stays at %d MiB", ErrInvalid, l.BootMiB)
	case targetMiB > l.MaxMiB:
		return fmt.Errorf("%w: %d MiB is above the sandbox's maximum of %d MiB (hypervisor.default_maxmemory)", ErrInvalid, targetMiB, l.MaxMiB)
	case targetMiB < l.BootMiB:
		return fmt.Errorf("%w: %d MiB is below the %d MiB the VM booted with; memory present at boot cannot be removed", ErrInvalid, targetMiB, l.BootMiB)
	case (targetMiB-l.BootMiB)%l.Align() != 0:
		return fmt.Errorf("%w: %d MiB is not aligned: %s memory changes in %d MiB blocks above the boot size (try %d MiB)",
			ErrInvalid, targetMiB, l.Mechanism, l.Align(), RoundUp(targetMiB-l.BootMiB, l.Align())+l.BootMiB)
	case targetMiB > currentMiB && targetMiB-currentMiB > hostAvailableMiB:
		return fmt.Errorf("%w: growing by %d MiB needs more than the %d MiB the host has available (MemAvailable)", ErrInvalid, targetMiB-currentMiB, hostAvailableMiB)
	}
	return nil
}

// memmapShare is the part of the guest's free memory a single grow step
// may spend on the page structures of the memory it adds.
const memmapShare = 2

// MaxStepMiB is the largest grow the guest can take at once with
// guestFreeMiB of free kernel (non-movable) memory. Every 4 KiB page added
// needs a 64-byte struct page (1/64 of the memory added) allocated from
// kernel memory the guest already has; memory onlined movable cannot hold
// them. A 256 MiB guest with 180 MiB free can take about 5.6 GiB at once;
// the agent onlines part of each step as kernel memory when the kernel's
// free memory runs low, so the next step has room again. Kata caps a single hot-plug at
// 48x the boot memory for this reason; splitting into steps that each fit
// makes the cap unnecessary.
func MaxStepMiB(guestFreeMiB, align int) int {
	step := guestFreeMiB / memmapShare * 64
	step = step / align * align
	if step < align {
		step = align
	}
	return step
}

// DIMMSizes splits a grow of addMiB into at most slots DIMMs of at most
// stepMiB each, all multiples of DIMMAlignMiB.
func DIMMSizes(addMiB, slots, stepMiB int) ([]int, error) {
	addMiB = RoundUp(addMiB, DIMMAlignMiB)
	stepMiB = stepMiB / DIMMAlignMiB * DIMMAlignMiB
	if stepMiB < DIMMAlignMiB {
		stepMiB = DIMMAlignMiB
	}
	var sizes []int
	for addMiB > 0 {
		n := min(addMiB, stepMiB)
		sizes = append(sizes, n)
		addMiB -= n
	}
	if len(sizes) > slots {
		// Fewer, larger DIMMs: spread evenly over the free slots.
		if slots == 0 {
			return nil, fmt.Errorf("%w: no free DIMM slot (hypervisor.memory_slots)", ErrInvalid)
		}
		total := 0
		for _, s := range sizes {
			total += s
		}
		per := RoundUp((total+slots-1)/slots, DIMMAlignMiB)
		sizes = sizes[:0]
		for total > 0 {
			n := min(total, per)
			sizes = append(sizes, n)
			total -= n
		}
	}
	return sizes, nil
}
