package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/hostmount"
	"github.com/berth-runtime/berth/internal/oci/ocitest"
)

// TestEntryPointsRejectTraversalIDs runs every sandbox entry point that
// builds a path from an id over the traversal table: each must refuse
// with InvalidArgument and touch nothing.
func TestEntryPointsRejectTraversalIDs(t *testing.T) {
	root := t.TempDir()
	runDir := filepath.Join(root, "run")
	cfg := config.Default()
	cfg.RunDir = runDir
	victim := filepath.Join(root, "victim")
	os.MkdirAll(victim, 0o700)
	os.WriteFile(filepath.Join(victim, ownerFileName), []byte("2147483646"), 0o600)
	sb := &Sandbox{id: "pod", dir: Dir(runDir, "pod"), mounts: map[string][]hostmount.Mount{}}
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"true"}}, Root: &specs.Root{Path: "rootfs"}}
	ids := append([]string{"../../victim", "../victim"}, ocitest.TraversalIDs...)
	for _, id := range ids {
		entries := map[string]error{}
		_, entries["Create"] = Create(context.Background(), cfg, Options{ID: id})
		_, entries["CreateContainer"] = sb.CreateContainer(context.Background(), ContainerConfig{ID: id, Spec: spec, RootfsDir: root})
		entries["DeleteContainer"] = sb.DeleteContainer(context.Background(), id)
		_, entries["Exec(container)"] = sb.Exec(context.Background(), id, "e1", &specs.Process{}, IO{})
		_, entries["Exec(exec)"] = sb.Exec(context.Background(), "c1", id, &specs.Process{}, IO{})
		entries["DeleteExec"] = sb.DeleteExec(context.Background(), "c1", id)
		entries["RemoveOrphan"] = RemoveOrphan(runDir, id)
		_, entries["Connect"] = Connect(runDir, id)
		for name, err := range entries {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%s(%q) = %v, want InvalidArgument", name, id, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(victim, ownerFileName)); err != nil {
		t.Fatalf("an entry point touched %s: %v", victim, err)
	}
	if _, err := os.Stat(runDir); err == nil {
		if e, _ := os.ReadDir(filepath.Join(runDir, "sandboxes")); len(e) > 0 {
			t.Fatalf("a refused id left %v in the run dir", e)
		}
	}
}

// TestCleanupStaleSkipsForeignEntries: stale collection removes only
// directories that Create could have made, never through a symlink.
func TestCleanupStaleSkipsForeignEntries(t *testing.T) {
	root := t.TempDir()
	runDir := filepath.Join(root, "run")
	base := filepath.Join(runDir, "sandboxes")
	victim := filepath.Join(root, "victim")
	for _, d := range []string{base, victim, filepath.Join(base, ".hidden"), filepath.Join(base, "dead-pod")} {
		os.MkdirAll(d, 0o700)
		os.WriteFile(filepath.Join(d, ownerFileName), []byte("2147483646"), 0o600)
	}
	os.Symlink(victim, filepath.Join(base, "link"))
	if n := CleanupStale(runDir); n != 1 {
		t.Errorf("CleanupStale removed %d sandboxes, want 1 (dead-pod)", n)
	}
	for _, p := range []string{victim, filepath.Join(base, ".hidden")} {
		if _, err := os.Stat(filepath.Join(p, ownerFileName)); err != nil {
			t.Errorf("CleanupStale touched %s: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(base, "dead-pod")); !os.IsNotExist(err) {
		t.Errorf("the dead sandbox is still there: %v", err)
	}
}
