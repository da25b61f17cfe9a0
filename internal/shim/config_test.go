package shim

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"

	"github.com/berth-runtime/berth/internal/config"
)

// TestConfigForHonoursConfigPath: a runtime's ConfigPath option (ctr run
// --runtime-config-path; CRI runtime options) selects the configuration;
// without it the shim's own applies, and a bad file is an error, not a
// crash.
func TestConfigForHonoursConfigPath(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "vfio.toml")
	os.WriteFile(good, []byte("[devices]\ncold_plug_vfio = \"root-port\"\n"), 0o644)
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[devices]\ncold_plug_vfio = \"sideways\"\n"), 0o644)
	s := &service{cfg: config.Default()}

	opts := func(path string) *taskAPI.CreateTaskRequest {
		a, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path})
		if err != nil {
			t.Fatal(err)
		}
		return &taskAPI.CreateTaskRequest{Options: a}
	}
	cfg, err := s.configFor(opts(good))
	if err != nil || cfg.Devices.ColdPlugVFIO != config.PortRoot {
		t.Fatalf("ConfigPath: %v, cold_plug_vfio %q", err, cfg.Devices.ColdPlugVFIO)
	}
	if cfg, err := s.configFor(&taskAPI.CreateTaskRequest{}); err != nil || cfg != s.cfg {
		t.Fatalf("no options: %v", err)
	}
	if _, err := s.configFor(opts(bad)); !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("bad file: %v", err)
	}
}
