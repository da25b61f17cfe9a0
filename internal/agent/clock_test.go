package agent

import (
	"testing"
	"time"
)

// The boot's difference (the emulated RTC's whole seconds: 0.5-1.0 s) and
// the transit the first set leaves (the guest behind by 6-25 ms) are
// stepped forward; the drift the host's periodic calls find (a few ms a
// minute) is slewed, and a guest ahead is stepped back only when far
// ahead, so that the time containers read does not run backwards.
func TestGuestClockStepsTheBootsDifferenceAndSlewsDrift(t *testing.T) {
	for _, tc := range []struct {
		off  time.Duration
		step bool
	}{
		{-990 * time.Millisecond, true},
		{700 * time.Millisecond, true},
		{25 * time.Millisecond, true},
		{clockStepForward, true},
		{-clockStepBack, true},
		{3 * time.Millisecond, false},
		{-3 * time.Millisecond, false},
		{-50 * time.Millisecond, false},
		{0, false},
	} {
		if got := stepClock(tc.off); got != tc.step {
			t.Errorf("off by %v: step %v, want %v", tc.off, got, tc.step)
		}
	}
}
