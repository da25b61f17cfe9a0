package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	apitypes "github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
)

// TestShimRuntimeInfo: `containerd-shim-berth-v2 -info` prints a
// protobuf RuntimeInfo and exits 0; containerd 2.x, which asks every
// runtime for it (its CRI plugin at start, `ctr plugins inspect-runtime`),
// decodes Berth's features from it and logs no error about the flag.
func TestShimRuntimeInfo(t *testing.T) {
	containerd(t)
	shimBin := filepath.Join(repoRoot(), "bin", "containerd-shim-berth-v2")
	cmd := exec.Command(shimBin, "-info")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s -info: %v: %s", shimBin, err, exitStderr(err))
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil || info.Name != berthRuntime || info.Features == nil {
		t.Fatalf("-info printed %q (%v): want a RuntimeInfo for %s with features", out, err, berthRuntime)
	}
	if !containerdV2() {
		t.Logf("containerd %s does not ask for -info; the binary answers", strings.TrimSpace(containerdVersion()))
		return
	}
	r := mustCtr(t, "plugins", "inspect-runtime", "--runtime", berthRuntime)
	var got struct {
		Name     string
		Features struct {
			OCIVersionMax string `json:"ociVersionMax"`
			Linux         struct {
				Namespaces []string `json:"namespaces"`
			} `json:"linux"`
		}
	}
	if err := json.Unmarshal([]byte(r), &got); err != nil || got.Name != berthRuntime || got.Features.OCIVersionMax == "" || len(got.Features.Linux.Namespaces) == 0 {
		t.Errorf("ctr plugins inspect-runtime: %v\n%s", err, r)
	}
	log, _ := os.ReadFile(filepath.Join(ctrd.dir, "containerd.log"))
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "-info") && strings.Contains(strings.ToLower(line), "level=error") || strings.Contains(line, "flag provided but not defined") {
			t.Errorf("containerd logged an error about -info: %s", line)
		}
	}
}
