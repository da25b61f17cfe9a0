package oci

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// TestUnsetRlimitsComeFromTheHostProcess: a container process gets the
// host process's limits for every limit its spec leaves out, keeps the
// ones it sets, and never an RLIMIT_NOFILE above the guest's nr_open.
func TestUnsetRlimitsComeFromTheHostProcess(t *testing.T) {
	own := OwnRlimits()
	if len(own) != len(rlimitNames) {
		t.Fatalf("OwnRlimits gave %d limits, want %d: %+v", len(own), len(rlimitNames), own)
	}
	var nproc unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NPROC, &nproc)
	for _, r := range own {
		switch r.Type {
		case "RLIMIT_NPROC":
			if r.Soft != nproc.Cur || r.Hard != nproc.Max {
				t.Errorf("RLIMIT_NPROC %d:%d, want this process's %d:%d", r.Soft, r.Hard, nproc.Cur, nproc.Max)
			}
		case "RLIMIT_NOFILE":
			if r.Hard > guestNrOpen || r.Soft > r.Hard {
				t.Errorf("RLIMIT_NOFILE %d:%d, want at most the guest's nr_open %d", r.Soft, r.Hard, guestNrOpen)
			}
		}
	}

	if r, ok := RlimitResource("RLIMIT_NPROC"); !ok || r != unix.RLIMIT_NPROC {
		t.Errorf("RlimitResource(RLIMIT_NPROC) = %d, %v", r, ok)
	}
	if _, ok := RlimitResource("RLIMIT_BOGUS"); ok {
		t.Error("RlimitResource knows RLIMIT_BOGUS")
	}

	set := []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 100, Hard: 200}}
	got := InheritRlimits(set, []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 1, Hard: 1}, {Type: "RLIMIT_NPROC", Soft: 5, Hard: 6}})
	want := []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 100, Hard: 200}, {Type: "RLIMIT_NPROC", Soft: 5, Hard: 6}}
	if !slices.Equal(got, want) {
		t.Errorf("InheritRlimits: %+v, want %+v (the spec's own kept, the rest inherited)", got, want)
	}
	if len(set) != 1 {
		t.Errorf("InheritRlimits changed its argument: %+v", set)
	}
}
