package shim

import (
	"os"
	"path/filepath"
	"testing"
)

// TestBundleConfigIsTheRequests: `shim delete` (Manager.Stop) cleans up in
// the run_dir of the configuration the create used, the runtime's
// ConfigPath when it had one, not the shim's default.
func TestBundleConfigIsTheRequests(t *testing.T) {
	dir := t.TempDir()
	def := filepath.Join(dir, "default.toml")
	os.WriteFile(def, []byte("run_dir = \""+filepath.Join(dir, "default-run")+"\"\n"), 0o644)
	other := filepath.Join(dir, "other.toml")
	os.WriteFile(other, []byte("run_dir = \""+filepath.Join(dir, "other-run")+"\"\n"), 0o644)
	t.Setenv("BERTH_CONFIG", def)

	for _, tc := range []struct {
		name   string
		record string // ConfigPath of the create; "" for none
		want   string
	}{
		{"default", "", filepath.Join(dir, "default-run")},
		{"ConfigPath", other, filepath.Join(dir, "other-run")},
	} {
		bundle := t.TempDir()
		if tc.record != "" {
			if err := recordConfigPath(bundle, tc.record); err != nil {
				t.Fatal(err)
			}
		}
		cfg, err := bundleConfig(bundle)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if cfg.RunDir != tc.want {
			t.Errorf("%s: run_dir %s, want %s", tc.name, cfg.RunDir, tc.want)
		}
	}

	// A recorded configuration that no longer loads is an error, not a
	// silent fall back to the default's run_dir.
	bundle := t.TempDir()
	recordConfigPath(bundle, filepath.Join(dir, "gone.toml"))
	if _, err := bundleConfig(bundle); err == nil {
		t.Error("a missing recorded configuration loaded")
	}
}
