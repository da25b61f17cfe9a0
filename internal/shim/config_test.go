package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/sandbox"
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

// TestConfigForWithoutDefault: when the shim's own configuration failed to
// load, a request without ConfigPath gets that error, and one with a valid
// ConfigPath gets its configuration, never a nil one.
func TestConfigForWithoutDefault(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[hypervisor]\nmemory_overhead = 64\n"), 0o644)
	loadErr := fmt.Errorf("hypervisor.default_memory is not a whole number: %w", config.ErrInvalid)
	s := &service{cfgErr: loadErr}
	if cfg, err := s.configFor(&taskAPI.CreateTaskRequest{}); cfg != nil || !errors.Is(err, loadErr) {
		t.Fatalf("no options: %v, %v", cfg, err)
	}
	a, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: good})
	cfg, err := s.configFor(&taskAPI.CreateTaskRequest{Options: a})
	if err != nil || cfg == nil || cfg.Hypervisor.MemoryOverheadMiB != 64 {
		t.Fatalf("ConfigPath next to a failed default: %v, %+v", err, cfg)
	}
	if got := s.podConfig(); got == nil {
		t.Fatal("podConfig is nil before any VM")
	}
}

// TestConfigPathValidatedWithHostFacts: a ConfigPath configuration gets
// the same host checks as the default one, at load.
func TestConfigPathValidatedWithHostFacts(t *testing.T) {
	if sandbox.HostFacts().Systemd {
		t.Skip("this host runs systemd")
	}
	path := filepath.Join(t.TempDir(), "systemd.toml")
	os.WriteFile(path, []byte("[cgroup]\nmanager = \"systemd\"\nparent = \"berth.slice\"\n"), 0o644)
	a, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path})
	s := &service{cfg: config.Default()}
	if _, err := s.configFor(&taskAPI.CreateTaskRequest{Options: a}); err == nil || !strings.Contains(err.Error(), "cgroup.manager") {
		t.Fatalf("systemd driver without systemd: %v", err)
	}
}
