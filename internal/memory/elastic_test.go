package memory

import (
	"strings"
	"testing"
	"time"
)

func testPolicy() ElasticPolicy {
	return ElasticPolicy{StepMiB: 256, HostReserveMiB: 1024, ShrinkDelay: 10 * time.Second,
		GuestReserveMiB: DefaultGuestReserveMiB, GrowMarginMiB: DefaultGrowMarginMiB, KeepMarginMiB: DefaultKeepMarginMiB,
		MinShrinkMiB: DefaultMinShrinkMiB, PSIGrowAbove: DefaultPSIGrowAbove, RefusalBackoff: DefaultRefusalBackoff}
}

func TestElasticDecide(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	limits := Limits{Mechanism: VirtioMem, BootMiB: 256, MaxMiB: 16384}
	state := func(cur int) ElasticState {
		return ElasticState{Limits: limits, FloorMiB: 256, CurrentMiB: cur, CeilingMiB: 16384, HostAvailableMiB: 20000}
	}
	idle := func(availMiB int, since time.Duration) GuestSample {
		return GuestSample{AvailableMiB: availMiB, IdleSince: now.Add(-since), IdleMinAvailMiB: availMiB}
	}
	for _, tc := range []struct {
		name   string
		st     ElasticState
		s      GuestSample
		action Action
		target int
		reason string
	}{
		{"idle at boot", state(256), idle(172, time.Minute), Hold, 256, ""},
		{"low memory grows a step", state(256), GuestSample{AvailableMiB: 130}, Grow, 512, "below 136 MiB"},
		{"throttled grows", state(512), GuestSample{AvailableMiB: 200, Throttled: true}, Grow, 768, "throttled"},
		{"psi with little free grows", state(512), GuestSample{AvailableMiB: 300, PSISomeAvg10: 40}, Grow, 768, "PSI"},
		{"throttled on page cache holds", state(2048), GuestSample{AvailableMiB: 1500, Throttled: true, IdleSince: now}, Hold, 2048, ""},
		{"psi with plenty free holds", state(2048), GuestSample{AvailableMiB: 1500, PSISomeAvg10: 40, IdleSince: now}, Hold, 2048, ""},
		{"grow stops at the ceiling", func() ElasticState { s := state(600); s.CeilingMiB = 656; return s }(), GuestSample{AvailableMiB: 50}, Grow, 656, ""},
		{"at the ceiling the guest decides", func() ElasticState { s := state(656); s.CeilingMiB = 656; return s }(), GuestSample{AvailableMiB: 50}, Hold, 656, "OOM killer decides"},
		{"ceiling above max is clamped", func() ElasticState { s := state(16384); s.CeilingMiB = 1 << 30; return s }(), GuestSample{AvailableMiB: 50}, Hold, 16384, "ceiling of 16384"},
		{"full host refuses", func() ElasticState { s := state(256); s.HostAvailableMiB = 1030; return s }(), GuestSample{AvailableMiB: 100}, Refuse, 512, "host is too full"},
		{"nearly full host grants part", func() ElasticState { s := state(256); s.HostAvailableMiB = 1124; return s }(), GuestSample{AvailableMiB: 100}, Grow, 356, "100 of 256 MiB granted"},
		{"after a refusal it waits", func() ElasticState { s := state(256); s.LastRefusal = now.Add(-time.Second); return s }(), GuestSample{AvailableMiB: 100}, Hold, 256, "refused"},
		{"after the backoff it retries", func() ElasticState { s := state(256); s.LastRefusal = now.Add(-time.Minute); return s }(), GuestSample{AvailableMiB: 100}, Grow, 512, ""},
		{"idle too briefly holds", state(1792), idle(1700, 5*time.Second), Hold, 1792, ""},
		{"recent change holds", func() ElasticState { s := state(1792); s.LastChange = now.Add(-3 * time.Second); return s }(), idle(1700, time.Minute), Hold, 1792, ""},
		{"shrinks are spaced", func() ElasticState { s := state(1792); s.LastShrink = now.Add(-time.Second); return s }(), idle(1700, time.Minute), Hold, 1792, ""},
		{"a shrink may follow a shrink", func() ElasticState { s := state(1792); s.LastShrink = now.Add(-3 * time.Second); return s }(), idle(1708, time.Minute), Shrink, 256, ""},
		{"idle after the workload shrinks to the floor", state(1792), idle(1708, 15*time.Second), Shrink, 256, "floor 256"},
		{"slowly rising use is not idle", state(1280), GuestSample{AvailableMiB: 600, IdleSince: now.Add(-time.Minute), IdleMinAvailMiB: 600, IdleFirstAvailMiB: 900}, Hold, 1280, "still rising"},
		{"idle with some use keeps headroom", state(1792), idle(1000, 15*time.Second), Shrink, 944, "keeping 152 MiB free"},
		{"small shrinks are skipped", state(1792), idle(180, time.Minute), Hold, 1792, ""},
		{"never below the limits' floor", func() ElasticState { s := state(1792); s.FloorMiB = 1280; return s }(), idle(1708, time.Minute), Shrink, 1280, "floor 1280"},
		{"dimm is not elastic", func() ElasticState { s := state(256); s.Mechanism = DIMM; return s }(), GuestSample{AvailableMiB: 10}, Hold, 256, "needs virtio-mem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testPolicy().Decide(tc.st, tc.s, now)
			if d.Action != tc.action || d.TargetMiB != tc.target || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("Decide = %+v, want %s to %d MiB with reason containing %q", d, tc.action, tc.target, tc.reason)
			}
			if d.Action == Grow || d.Action == Shrink {
				if (d.TargetMiB-tc.st.BootMiB)%VirtioMemBlockMiB != 0 || d.TargetMiB > tc.st.MaxMiB || d.TargetMiB < tc.st.BootMiB {
					t.Errorf("target %d MiB is not a valid size", d.TargetMiB)
				}
				if d.Reason == "" {
					t.Error("a change without a reason")
				}
			}
		})
	}
}

func TestElasticGrowCoversTheDeficit(t *testing.T) {
	p := testPolicy()
	p.StepMiB = 64
	st := ElasticState{Limits: Limits{Mechanism: VirtioMem, BootMiB: 256, MaxMiB: 16384}, FloorMiB: 256, CurrentMiB: 256, CeilingMiB: 16384, HostAvailableMiB: 20000}
	if d := p.Decide(st, GuestSample{AvailableMiB: 0}, time.Now()); d.Action != Grow || d.TargetMiB != 256+192 {
		t.Errorf("with 64 MiB steps and nothing available: %+v, want +192 MiB (three steps cover the 136 MiB deficit)", d)
	}
}

// A pod that shrank must not grow again at once: the shrink leaves the
// guest above the grow threshold by the keep margin.
func TestElasticShrinkDoesNotInviteGrow(t *testing.T) {
	now := time.Now()
	p := testPolicy()
	st := ElasticState{Limits: Limits{Mechanism: VirtioMem, BootMiB: 256, MaxMiB: 16384}, FloorMiB: 256, CurrentMiB: 2048, CeilingMiB: 16384, HostAvailableMiB: 20000}
	for _, used := range []int{100, 300, 700, 1500} {
		avail := st.CurrentMiB - 40 - used
		d := p.Decide(st, GuestSample{AvailableMiB: avail, IdleSince: now.Add(-time.Minute), IdleMinAvailMiB: avail}, now)
		if d.Action != Shrink {
			continue
		}
		after := avail - (st.CurrentMiB - d.TargetMiB)
		if after2 := (GuestSample{AvailableMiB: after}); p.Pressure(after2) && d.TargetMiB > st.FloorMiB {
			t.Errorf("using %d MiB: shrink to %d leaves %d MiB available, which grows again", used, d.TargetMiB, after)
		}
	}
}

func TestElasticCanGrow(t *testing.T) {
	p := testPolicy()
	now := time.Now()
	st := ElasticState{Limits: Limits{Mechanism: VirtioMem, BootMiB: 256, MaxMiB: 16384}, FloorMiB: 256, CurrentMiB: 256, CeilingMiB: 16384, HostAvailableMiB: 20000}
	if !p.CanGrow(st, now) {
		t.Error("a small VM on an empty host cannot grow")
	}
	full := st
	full.HostAvailableMiB = p.HostReserveMiB + 8
	atCeiling := st
	atCeiling.CeilingMiB = 256
	refused := st
	refused.LastRefusal = now.Add(-time.Second)
	for name, s := range map[string]ElasticState{"full host": full, "at the ceiling": atCeiling, "just refused": refused} {
		if p.CanGrow(s, now) {
			t.Errorf("%s: CanGrow, so the guest would throttle for memory that will not come", name)
		}
	}
}

func TestSanitize(t *testing.T) {
	total, avail, minAvail, psi := Sanitize(512, 1<<40, 1<<41, 1<<42, 1e9)
	if total != 512 || avail != 512 || minAvail != 512 || psi != 100 {
		t.Errorf("Sanitize of a lying guest = %d %d %d %v", total, avail, minAvail, psi)
	}
	nan := 0.0
	nan /= nan
	total, avail, minAvail, psi = Sanitize(512, 400<<20, 100<<20, 50<<20, nan)
	if total != 400 || avail != 100 || minAvail != 50 || psi != 0 {
		t.Errorf("Sanitize = %d %d %d %v", total, avail, minAvail, psi)
	}
}

// TestShrinkFloorKeepsWhatTheGuestUses: a shrink stops at the guest's use
// plus the free memory an elastic shrink keeps, rounded up to the
// mechanism's granularity, never below the boot memory nor above the
// VM's size.
func TestShrinkFloorKeepsWhatTheGuestUses(t *testing.T) {
	vmem := Limits{Mechanism: VirtioMem, BootMiB: 256, MaxMiB: 16384}
	dimm := Limits{Mechanism: DIMM, BootMiB: 256, MaxMiB: 16384, Slots: 8}
	// The free memory kept is 112 + 24 + 16 = 152 MiB.
	for _, c := range []struct {
		name           string
		l              Limits
		current, avail int
		want           int
	}{
		{"a guest using 718 MiB of 1280 keeps 562 - 152", vmem, 1280, 562, 870},
		{"an idle guest goes back to its boot memory", vmem, 1280, 1200, 256},
		{"odd sizes round up to a 2 MiB block", vmem, 1280, 427, 1006},
		{"a guest that reports nothing free keeps its size", vmem, 1280, 0, 1280},
		{"DIMMs go in whole 128 MiB", dimm, 1280, 600, 896},
	} {
		if got := ShrinkFloorMiB(c.l, c.current, c.avail); got != c.want {
			t.Errorf("%s: ShrinkFloorMiB(%d MiB, %d available) = %d, want %d", c.name, c.current, c.avail, got, c.want)
		}
	}
}
