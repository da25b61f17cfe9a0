package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
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

// criSandboxAPIHandler is a containerd 2.x runtime handler with
// sandboxer = "shim" (containerd's Sandbox API), which Berth refuses.
const criSandboxAPIHandler = "berth-sandbox-api"

// TestContainerd2SandboxAPIRefused: a pod on a handler configured with
// containerd 2.x's Sandbox API fails to start with an error naming the
// setting (not "open config.json: no such file or directory"), and
// leaves nothing behind.
func TestContainerd2SandboxAPIRefused(t *testing.T) {
	c := newCRI(t)
	if !containerdV2() {
		t.Skip("containerd 1.x has no Sandbox API")
	}
	defer assertNoLeaks(t)
	parent := "/kubepods/besteffort/podsbapi" + strings.ReplaceAll(t.Name(), "/", "")
	trackPodCgroup(t, parent)
	config := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "sbapi", Uid: "sbapi", Namespace: "berth-e2e"},
		Linux: &cri.LinuxPodSandboxConfig{
			CgroupParent: parent,
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{
				Network: cri.NamespaceMode_NODE, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD,
			}},
		},
	}
	resp, err := c.rt.RunPodSandbox(criCtx(t, 2*time.Minute), &cri.RunPodSandboxRequest{Config: config, RuntimeHandler: criSandboxAPIHandler})
	if err == nil {
		c.removePod(t, resp.PodSandboxId)
		t.Fatal("RunPodSandbox with sandboxer = \"shim\" succeeded; Berth does not serve the Sandbox API")
	}
	if !strings.Contains(err.Error(), `sandboxer = "shim"`) {
		t.Errorf("RunPodSandbox: %v\nwant an error naming sandboxer = \"shim\"", err)
	}
	t.Logf("RunPodSandbox: %v", err)
	// CRI keeps nothing of a pod that failed to start; remove what it
	// may list anyway.
	list, _ := c.rt.ListPodSandbox(criCtx(t, time.Minute), &cri.ListPodSandboxRequest{})
	for _, p := range list.GetItems() {
		if p.GetMetadata().GetName() == "sbapi" {
			c.removePod(t, p.Id)
		}
	}
}
