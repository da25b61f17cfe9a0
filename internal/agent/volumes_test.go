package agent

import (
	"errors"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/oci"
)

// TestSharedVolumeDetachedWhenItsLastContainerGoes: the agent's copy of a
// shared volume's submount stays while a container holds it and is
// detached when the last one is deleted, so a container restarted against
// a fresh bind does not leave the old automount behind; a failed create
// gives back what it took.
func TestSharedVolumeDetachedWhenItsLastContainerGoes(t *testing.T) {
	vol, other, file := oci.GuestVolumePath("1-data"), oci.GuestVolumePath("2-cache"), oci.GuestVolumePath("3-hosts")
	var detached, shared []string
	v := &volumeMounts{
		cross: func(p string) (bool, error) {
			if p == oci.GuestVolumePath("4-gone") {
				return false, errors.New("no such file or directory")
			}
			return p != file, nil
		},
		unmount: func(p string) error { detached = append(detached, p); return nil },
		share:   func(p string) error { shared = append(shared, p); return nil },
	}
	mounts := func(srcs ...string) []specs.Mount {
		var ms []specs.Mount
		for _, s := range srcs {
			ms = append(ms, specs.Mount{Destination: "/mnt", Source: s, Type: "bind"})
		}
		return ms
	}
	a, err := v.reach(mounts(vol, vol, file, "/run/berth/shared/a/rootfs"))
	if err != nil || !slices.Equal(a, []string{vol}) {
		t.Fatalf("reach: %v, %v; want [%s] (once; no file, no rootfs)", a, err, vol)
	}
	b, err := v.reach(mounts(vol, other))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.reach(mounts(other, oci.GuestVolumePath("4-gone"))); err == nil {
		t.Fatal("reach of a volume missing in the guest succeeded")
	}
	if want := []string{vol, other}; !slices.Equal(shared, want) {
		t.Errorf("made shared %v, want each directory once: %v", shared, want)
	}
	v.release(a)
	if len(detached) != 0 {
		t.Fatalf("detached %v while another container holds them", detached)
	}
	v.release(b)
	slices.Sort(detached)
	if want := []string{vol, other}; !slices.Equal(detached, want) {
		t.Errorf("detached %v after the last container, want %v", detached, want)
	}
	if len(v.users) != 0 {
		t.Errorf("users left: %v", v.users)
	}
}
