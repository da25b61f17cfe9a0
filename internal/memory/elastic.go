package memory

import (
	"fmt"
	"time"
)

// Elastic memory: a sandbox whose containers may use more than the VM has
// (no memory limit, or limits above the VM's size) grows when the guest is
// short of memory and shrinks back towards its floor when the memory has
// been idle. Decide is the whole policy, a pure function of the sandbox's
// sizes, the host's free memory and one guest sample, so that it can be
// tested without a VM; internal/sandbox feeds it and carries it out.
//
// The thresholds, all on the guest's MemAvailable:
//
//	reserve           the guest keeps this free: the agent throttles the
//	                  containers (memory.high) rather than let them eat it
//	reserve+grow      below it the VM grows, by a step
//	reserve+grow+keep an idle VM keeps this much free when it shrinks
//
// The keep margin and the shrink delay are the hysteresis: a pod that
// oscillates around one size is not shrunk until it has been idle for the
// delay, and then not below what keeps it clear of the grow threshold.

// ElasticPolicy are the configured knobs (config [memory]).
type ElasticPolicy struct {
	StepMiB        int           // grow step
	HostReserveMiB int           // host MemAvailable never given to VMs
	ShrinkDelay    time.Duration // idle time before a shrink
	// GuestReserveMiB is the free memory the guest keeps (its kernel,
	// page structures of the next grow, the agent).
	GuestReserveMiB int
	// GrowMarginMiB: grow while MemAvailable < reserve + margin.
	GrowMarginMiB int
	// KeepMarginMiB: a shrink leaves reserve + grow margin + this free.
	KeepMarginMiB int
	// MinShrinkMiB: smaller shrinks are not worth the migration.
	MinShrinkMiB int
	// PSIGrowAbove: PSI some avg10 (percent) that counts as pressure
	// when MemAvailable is also below reserve + step.
	PSIGrowAbove float64
	// RefusalBackoff: after a refused grow, wait this long before
	// trying again; the guest runs unthrottled meanwhile.
	RefusalBackoff time.Duration
}

// Defaults of the fixed parts of the policy. The guest reserve is above
// the agent's kernel reserve for onlining (96 MiB of free non-movable
// memory): the memory a grow adds is then onlined movable, so a shrink
// can take it back.
const (
	DefaultGuestReserveMiB = 112
	DefaultGrowMarginMiB   = 24
	DefaultKeepMarginMiB   = 16
	DefaultMinShrinkMiB    = 64
	DefaultPSIGrowAbove    = 10
	DefaultRefusalBackoff  = 10 * time.Second
	// ShrinkSpacing separates successive shrinks: once the VM has
	// shrunk, the next shrink is sized by samples taken at the new size
	// and follows without a full delay.
	ShrinkSpacing = 2 * time.Second
)

// GrowBelowMiB is the MemAvailable under which the VM grows.
func (p ElasticPolicy) GrowBelowMiB() int { return p.GuestReserveMiB + p.GrowMarginMiB }

// ElasticState is the sandbox as the controller sees it.
type ElasticState struct {
	Limits
	// FloorMiB is what the containers' limits need (memory.Target): the
	// controller never shrinks below it, nor below the boot size.
	FloorMiB   int
	CurrentMiB int
	// CeilingMiB is how far it may grow: the pod's limits when every
	// container has one, else the sandbox's maximum (default_maxmemory,
	// possibly lowered by an annotation). Never above Limits.MaxMiB.
	CeilingMiB int
	// HostAvailableMiB is the host's MemAvailable now.
	HostAvailableMiB int
	// LastChange is when the VM last grew, or a shrink last gave nothing back
	// (zero: never): the shrink delay runs from it.
	LastChange time.Time
	// LastShrink is when the VM last shrank: shrinks that follow one
	// another are ShrinkSpacing apart.
	LastShrink time.Time
	// LastRefusal is when a grow was last refused (zero: never).
	LastRefusal time.Time
}

// GuestSample is one sample from the guest, already bounded by the host
// (see Sanitize).
type GuestSample struct {
	MemTotalMiB     int
	AvailableMiB    int
	PSISomeAvg10    float64
	Throttled       bool // the containers hit their soft limit
	IdleSince       time.Time
	IdleMinAvailMiB int // lowest MemAvailable of the last shrink delay
	// IdleFirstAvailMiB is the oldest MemAvailable of the last shrink
	// delay: below it by more than risingSlackMiB now, the workload is
	// still taking memory, slowly enough not to be pressure, and a
	// shrink would only take memory it is about to need.
	IdleFirstAvailMiB int
}

// risingSlackMiB is how much MemAvailable may fall during the shrink delay
// for the memory still to count as idle.
const risingSlackMiB = 16

// Action is what a decision does.
type Action string

const (
	Hold   Action = "none"
	Grow   Action = "grow"
	Shrink Action = "shrink"
	Refuse Action = "refuse" // a grow the host cannot serve
)

// Decision is the outcome of Decide, with the reason that is logged and
// shown by `berth status`.
type Decision struct {
	Action    Action
	FromMiB   int
	TargetMiB int
	Reason    string
}

// DeltaMiB is how much the decision moves.
func (d Decision) DeltaMiB() int {
	if d.TargetMiB > d.FromMiB {
		return d.TargetMiB - d.FromMiB
	}
	return d.FromMiB - d.TargetMiB
}

// minUsefulGrowMiB: a partial grow smaller than this is refused instead.
const minUsefulGrowMiB = 16

// CanGrow says whether the guest should throttle its containers while it
// waits for memory: only while the VM is below its ceiling, the host has
// memory to spare and is not refusing.
func (p ElasticPolicy) CanGrow(st ElasticState, now time.Time) bool {
	return st.CurrentMiB < min(st.CeilingMiB, st.MaxMiB) &&
		st.HostAvailableMiB-p.HostReserveMiB >= minUsefulGrowMiB &&
		(st.LastRefusal.IsZero() || now.Sub(st.LastRefusal) >= p.RefusalBackoff)
}

// Pressure says whether a sample asks for more memory.
func (p ElasticPolicy) Pressure(s GuestSample) bool {
	// Throttling and stalls count only with little memory free: the
	// soft limit also reclaims page cache, which MemAvailable counts as
	// free, and a pod reading a large file must not grow the VM for it.
	short := s.AvailableMiB < p.GuestReserveMiB+p.StepMiB
	return s.AvailableMiB < p.GrowBelowMiB() || (s.Throttled && short) ||
		(p.PSIGrowAbove > 0 && s.PSISomeAvg10 >= p.PSIGrowAbove && short)
}

// Decide returns what to do with one sample.
func (p ElasticPolicy) Decide(st ElasticState, s GuestSample, now time.Time) Decision {
	d := Decision{Action: Hold, FromMiB: st.CurrentMiB, TargetMiB: st.CurrentMiB}
	align := st.Align()
	ceiling := min(st.CeilingMiB, st.MaxMiB)
	floor := max(st.FloorMiB, st.BootMiB)
	if st.Mechanism != VirtioMem {
		d.Reason = fmt.Sprintf("elastic memory needs virtio-mem, the sandbox uses %s", st.Mechanism)
		return d
	}
	if p.Pressure(s) {
		why := fmt.Sprintf("guest MemAvailable %d MiB below %d MiB", s.AvailableMiB, p.GrowBelowMiB())
		switch {
		case s.Throttled:
			why = fmt.Sprintf("containers throttled at their soft limit (guest MemAvailable %d MiB)", s.AvailableMiB)
		case s.AvailableMiB >= p.GrowBelowMiB():
			why = fmt.Sprintf("memory stall: PSI some avg10 %.1f%% (guest MemAvailable %d MiB)", s.PSISomeAvg10, s.AvailableMiB)
		}
		if st.CurrentMiB >= ceiling {
			d.Reason = fmt.Sprintf("%s, but the VM is at its ceiling of %d MiB: the guest's OOM killer decides", why, ceiling)
			return d
		}
		if !st.LastRefusal.IsZero() && now.Sub(st.LastRefusal) < p.RefusalBackoff {
			d.Reason = fmt.Sprintf("%s; the last grow was refused %s ago, retrying after %s", why, now.Sub(st.LastRefusal).Round(time.Second), p.RefusalBackoff)
			return d
		}
		// A step, or more if the guest is further below the threshold.
		want := p.StepMiB
		if deficit := p.GrowBelowMiB() - s.AvailableMiB; deficit > want {
			want = RoundUp(deficit, p.StepMiB)
		}
		want = RoundUp(want, align)
		want = min(want, ceiling-st.CurrentMiB)
		spare := st.HostAvailableMiB - p.HostReserveMiB
		if spare < want {
			grant := spare / align * align
			if grant < min(want, minUsefulGrowMiB) {
				d.Action = Refuse
				d.TargetMiB = st.CurrentMiB + want
				d.Reason = fmt.Sprintf("%s, but the host is too full: MemAvailable %d MiB minus the %d MiB reserve (memory.host_reserve) leaves %d MiB, the grow needs %d MiB",
					why, st.HostAvailableMiB, p.HostReserveMiB, max(spare, 0), want)
				return d
			}
			why += fmt.Sprintf("; %d of %d MiB granted (host MemAvailable %d MiB, reserve %d MiB)", grant, want, st.HostAvailableMiB, p.HostReserveMiB)
			want = grant
		}
		d.Action, d.TargetMiB, d.Reason = Grow, st.CurrentMiB+want, why
		return d
	}
	// Shrink: idle for the delay since the last change and since the
	// memory was last needed, and then only what keeps the guest clear
	// of the grow threshold.
	if st.CurrentMiB <= floor {
		return d
	}
	if s.IdleSince.IsZero() || now.Sub(s.IdleSince) < p.ShrinkDelay || (!st.LastChange.IsZero() && now.Sub(st.LastChange) < p.ShrinkDelay) ||
		(!st.LastShrink.IsZero() && now.Sub(st.LastShrink) < ShrinkSpacing) {
		return d
	}
	if s.IdleFirstAvailMiB > 0 && s.AvailableMiB+risingSlackMiB < s.IdleFirstAvailMiB {
		d.Reason = fmt.Sprintf("memory use still rising: guest MemAvailable fell from %d to %d MiB during the last %s", s.IdleFirstAvailMiB, s.AvailableMiB, p.ShrinkDelay)
		return d
	}
	keep := p.GrowBelowMiB() + p.KeepMarginMiB
	target := st.CurrentMiB - (s.IdleMinAvailMiB - keep)
	target = max(RoundUp(target-st.BootMiB, align)+st.BootMiB, floor)
	if target > st.CurrentMiB || st.CurrentMiB-target < p.MinShrinkMiB {
		return d
	}
	d.Action, d.TargetMiB = Shrink, target
	d.Reason = fmt.Sprintf("idle for %s: guest MemAvailable at least %d MiB, keeping %d MiB free", now.Sub(s.IdleSince).Round(time.Second), s.IdleMinAvailMiB, keep)
	if target == floor {
		d.Reason += fmt.Sprintf(" (floor %d MiB)", floor)
	}
	return d
}

// ShrinkFloorMiB is the least a VM of currentMiB whose guest reports
// availMiB available may shrink to: what the guest uses, plus the free
// memory an elastic shrink keeps (reserve, grow margin and keep margin).
// A shrink below what the guest uses makes its kernel OOM-kill a
// container: seen with a container without a limit that used memory
// another container's limit had grown the VM for, once that container
// was deleted. A guest reporting less than it has only keeps memory the
// VM already holds.
func ShrinkFloorMiB(l Limits, currentMiB, availMiB int) int {
	keep := DefaultGuestReserveMiB + DefaultGrowMarginMiB + DefaultKeepMarginMiB
	floor := max(currentMiB-max(availMiB-keep, 0), l.BootMiB)
	return min(RoundUp(floor-l.BootMiB, l.Align())+l.BootMiB, currentMiB)
}

// Sanitize bounds a guest's report by what the host knows: the guest
// cannot have more memory than the VM, nor more available than it has.
// A hostile guest can still lie within these bounds; the ceiling, the
// host reserve and the rate limit bound what a lie can get it.
func Sanitize(currentMiB int, memTotalBytes, availBytes, minAvailBytes uint64, psi float64) (total, avail, minAvail int, psiOut float64) {
	total = int(min(memTotalBytes>>20, uint64(currentMiB)))
	avail = int(min(availBytes>>20, uint64(total)))
	minAvail = int(min(minAvailBytes>>20, uint64(avail)))
	if psi != psi || psi < 0 { // NaN or negative
		psi = 0
	}
	return total, avail, minAvail, min(psi, 100)
}
