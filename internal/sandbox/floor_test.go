package sandbox

import (
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestMemoryFloor(t *testing.T) {
	s := &Sandbox{}
	if err := s.checkMemoryFloor(128); err != nil {
		t.Fatalf("no floor: %v", err)
	}
	s.SetMemoryFloor(func() int { return 1024 })
	if err := s.checkMemoryFloor(768); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "memory limits") {
		t.Fatalf("below the floor: %v", err)
	}
	for _, ok := range []int{1024, 2048} {
		if err := s.checkMemoryFloor(ok); err != nil {
			t.Fatalf("%d MiB: %v", ok, err)
		}
	}
}

func TestVirtiofsdFeatureArgsFromHelp(t *testing.T) {
	for help, want := range map[string]string{
		"    -o announce_submounts      Announce sub-mount points to the guest":         "-o announce_submounts",
		"      --announce-submounts  Tell the guest which directories are mount points": "--announce-submounts",
		"usage: virtiofsd [options]": "",
		// QEMU 7.2's C virtiofsd
		"    -o announce_submounts      Announce sub-mount points to the guest\n    -o xattr|no_xattr          enable/disable xattr": "-o announce_submounts -o xattr",
		// the Rust one
		"      --xattr  Enable support for extended attributes\n      --announce-submounts  Tell the guest": "--announce-submounts --xattr",
	} {
		if got := strings.Join(featuresFromHelp(help).args(true), " "); got != want {
			t.Errorf("%q: %q, want %q", help, got, want)
		}
	}
}

func TestWithWritableSubmounts(t *testing.T) {
	mounts := []specs.Mount{
		{Destination: "/vol", Source: "/run/berth/shared/c/mounts/1-vol", Type: "bind", Options: []string{"rbind", "ro"}},
		{Destination: "/other", Source: "/run/berth/shared/c/mounts/2-o", Type: "bind", Options: []string{"rbind"}},
	}
	got := withWritableSubmounts(mounts, map[int][]string{0: {"sub", "sub/deeper"}})
	want := []string{"/vol", "/vol/sub", "/vol/sub/deeper", "/other"}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i, w := range want {
		if got[i].Destination != w {
			t.Errorf("mount %d: %s, want %s", i, got[i].Destination, w)
		}
	}
	if got[1].Source != "/run/berth/shared/c/mounts/1-vol/sub" || slices.Contains(got[1].Options, "ro") {
		t.Errorf("submount bind %+v: want it from the share, not read-only", got[1])
	}
	// Only "rbind,ro" (runc's non-recursive read-only) needs it.
	dir := t.TempDir()
	for _, opts := range [][]string{{"rbind"}, {"bind", "ro"}, {"rbind", "ro", "rro"}} {
		if rel := readOnlySubmounts(specs.Mount{Source: dir, Options: opts}); rel != nil {
			t.Errorf("%v: %v", opts, rel)
		}
	}
}
