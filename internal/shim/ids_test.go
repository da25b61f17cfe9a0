package shim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/oci/ocitest"
)

func writeBundle(t *testing.T, dir, sandboxID string) {
	t.Helper()
	spec := specs.Spec{Version: specs.Version, Root: &specs.Root{Path: "rootfs"}, Process: &specs.Process{Args: []string{"true"}},
		Annotations: map[string]string{oci.SandboxIDAnnotations[0]: sandboxID, oci.ContainerTypeAnnotations[0]: "container"}}
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// plantOrphan makes a directory that looks like a sandbox whose owner is
// gone, so that RemoveOrphan would delete it if it were ever reached.
func plantOrphan(t *testing.T, dir string) {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	// pid 0x7ffffffe is never a live process.
	os.WriteFile(filepath.Join(dir, "owner.pid"), []byte("2147483646"), 0o600)
	os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o600)
}

// TestShimDeleteStaysInRunDir: containerd's `shim delete` reads the
// sandbox id from the bundle's annotations, which the pod spec's author
// writes. Whatever they say, nothing outside <run_dir>/sandboxes is
// removed; a plain id is still cleaned up (the control that shows the
// path is reached).
func TestShimDeleteStaysInRunDir(t *testing.T) {
	root := t.TempDir()
	runDir := filepath.Join(root, "run")
	cfgFile := filepath.Join(root, "berth.toml")
	os.WriteFile(cfgFile, []byte("run_dir = \""+runDir+"\"\n"), 0o644)
	t.Setenv("BERTH_CONFIG", cfgFile)
	t.Setenv("BERTH_STATE_DIR", filepath.Join(root, "state"))
	if _, err := loadConfig(); err != nil {
		t.Fatalf("test configuration: %v", err)
	}
	// The victims: directories an attacker would like removed.
	victims := map[string]string{
		"../victim":                    filepath.Join(runDir, "victim"),
		"../../victim":                 filepath.Join(root, "victim"),
		"../../../../victim":           filepath.Join(root, "victim"), // clamped at /
		"/" + root[1:] + "/abs-victim": filepath.Join(root, "abs-victim"),
	}
	ids := append([]string{}, ocitest.TraversalIDs...)
	for id, dir := range victims {
		plantOrphan(t, dir)
		ids = append(ids, id)
	}
	bundle := t.TempDir()
	t.Chdir(bundle)
	for _, id := range ids {
		writeBundle(t, bundle, id)
		if _, err := (Manager{}).Stop(context.Background(), "c1"); err != nil {
			t.Fatalf("Stop with sandbox id %q: %v", id, err)
		}
	}
	for id, dir := range victims {
		if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
			t.Errorf("shim delete with sandbox id %q removed %s: %v", id, dir, err)
		}
	}
	// Control: a valid id's orphan is removed.
	good := filepath.Join(runDir, "sandboxes", "pod-1")
	plantOrphan(t, good)
	writeBundle(t, bundle, "pod-1")
	(Manager{}).Stop(context.Background(), "c1")
	if _, err := os.Stat(good); !os.IsNotExist(err) {
		t.Fatalf("the orphan of a valid sandbox id was not removed: %v", err)
	}
}

// TestShimStartRejectsTraversalIDs: `shim start` refuses a hostile sandbox
// id before it builds a socket address from it.
func TestShimStartRejectsTraversalIDs(t *testing.T) {
	bundle := t.TempDir()
	t.Chdir(bundle)
	for _, id := range ocitest.TraversalIDs {
		if id == "" {
			continue // no annotation: the container is its own sandbox
		}
		writeBundle(t, bundle, id)
		_, err := (Manager{}).Start(context.Background(), "c1", shim.StartOpts{Address: filepath.Join(bundle, "containerd.sock")})
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("Start with sandbox id %q = %v, want InvalidArgument", id, err)
		}
	}
}

// TestTaskAPIRejectsTraversalIDs: Create and Exec refuse hostile container,
// sandbox and exec ids before anything is mounted or booted.
func TestTaskAPIRejectsTraversalIDs(t *testing.T) {
	bundle := t.TempDir()
	s := &service{cfg: config.Default(), containers: map[string]*container{}}
	for _, id := range ocitest.TraversalIDs {
		writeBundle(t, bundle, "pod-1")
		if _, err := s.create(context.Background(), &taskAPI.CreateTaskRequest{ID: id, Bundle: bundle}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Create with container id %q = %v, want InvalidArgument", id, err)
		}
		if id == "" {
			continue
		}
		writeBundle(t, bundle, id)
		if _, err := s.create(context.Background(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: bundle}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Create with sandbox id %q = %v, want InvalidArgument", id, err)
		}
	}
	s.containers["c1"] = &container{id: "c1", execs: map[string]*process{}}
	for _, id := range ocitest.TraversalIDs {
		if err := s.exec(context.Background(), &taskAPI.ExecProcessRequest{ID: "c1", ExecID: id}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Exec with exec id %q = %v, want InvalidArgument", id, err)
		}
	}
	if len(s.containers) != 1 {
		t.Fatalf("a refused create left containers behind: %v", s.containers)
	}
}
