package sandbox

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// A guest reports when its processes exited; the host keeps that only
// while it lies between the host's request and the host hearing of the
// exit, so that a hostile or drifting guest cannot make a container end
// before it started or in the future.
func TestGuestReportedExitTimeIsBoundedByWhatTheHostSaw(t *testing.T) {
	asked := time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC)
	heard := asked.Add(2 * time.Second)
	within := asked.Add(1500 * time.Millisecond)
	for _, tc := range []struct {
		name     string
		reported *timestamppb.Timestamp
		want     time.Time
	}{
		{"between the request and the exit news", timestamppb.New(within), within},
		{"missing", nil, heard},
		{"out of range", &timestamppb.Timestamp{Seconds: -1 << 62}, heard},
		{"before the host asked", timestamppb.New(asked.Add(-time.Second)), heard},
		{"after the host heard", timestamppb.New(heard.Add(time.Hour)), heard},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exitTime(tc.reported, asked, heard); !got.Equal(tc.want) {
				t.Errorf("exit time %v, want %v", got, tc.want)
			}
		})
	}
}
