package memory

import (
	"errors"
	"strings"
	"testing"
)

func TestTarget(t *testing.T) {
	l := Limits{Mechanism: VirtioMem, BootMiB: 256, MaxMiB: 4096}
	for _, tc := range []struct {
		name     string
		overhead int
		limits   []int64
		want     int
	}{
		{"no containers", 0, nil, 256},
		{"unlimited container adds nothing", 0, []int64{0, -1}, 256},
		{"one 1 GiB container", 0, []int64{1 << 30}, 256 + 1024},
		{"overhead and rounding to 2 MiB", 16, []int64{1<<20 + 1}, 256 + 16 + 2},
		{"clamped to the ceiling", 0, []int64{8 << 30}, 4096},
	} {
		if got := Target(l, tc.overhead, tc.limits); got != tc.want {
			t.Errorf("%s: Target = %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := Target(Limits{Mechanism: DIMM, BootMiB: 256, MaxMiB: 4096}, 0, []int64{100 << 20}); got != 384 {
		t.Errorf("DIMM targets round to 128 MiB: got %d", got)
	}
}

func TestCheck(t *testing.T) {
	l := Limits{Mechanism: VirtioMem, BootMiB: 256, MaxMiB: 4096}
	for _, tc := range []struct {
		target, avail int
		want          string // "" = ok
	}{
		{1280, 8000, ""},
		{8192, 100000, "default_maxmemory"},
		{128, 8000, "booted with"},
		{1281, 8000, "not aligned"},
		{4096, 1000, "MemAvailable"},
		{256, 0, ""}, // shrinking back needs no host memory
	} {
		err := Check(l, 512, tc.target, tc.avail)
		if tc.want == "" {
			if err != nil {
				t.Errorf("target %d: %v", tc.target, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("target %d: err %v, want one mentioning %q", tc.target, err, tc.want)
		}
	}
	if err := Check(Limits{Mechanism: None, BootMiB: 256, MaxMiB: 256}, 256, 512, 1<<20); err == nil || !strings.Contains(err.Error(), "memory_hotplug") {
		t.Errorf("hot-plug off: %v", err)
	}
}

func TestMaxStep(t *testing.T) {
	// 180 MiB free: 90 MiB for struct pages covers 5760 MiB.
	if got := MaxStepMiB(180, 2); got != 5760 {
		t.Errorf("MaxStepMiB(180) = %d", got)
	}
	if got := MaxStepMiB(0, 128); got != 128 {
		t.Errorf("at least one block: %d", got)
	}
}

func TestDIMMSizes(t *testing.T) {
	got, err := DIMMSizes(8192, 8, 4096)
	if err != nil || len(got) != 2 || got[0] != 4096 || got[1] != 4096 {
		t.Errorf("8 GiB in 4 GiB steps: %v %v", got, err)
	}
	got, _ = DIMMSizes(100, 8, 4096)
	if len(got) != 1 || got[0] != 128 {
		t.Errorf("rounded to 128 MiB: %v", got)
	}
	got, _ = DIMMSizes(8192, 1, 1024)
	if len(got) != 1 || got[0] != 8192 {
		t.Errorf("one slot takes it all: %v", got)
	}
	if _, err := DIMMSizes(128, 0, 1024); err == nil {
		t.Error("no slots accepted")
	}
}
