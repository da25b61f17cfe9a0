package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestInfo: -info answers with a RuntimeInfo that containerd 2.x can
// decode: the name, the features as runtime-spec JSON under the type URL
// containerd registers, and the options it was given, echoed back.
func TestInfo(t *testing.T) {
	opts, _ := proto.Marshal(&anypb.Any{TypeUrl: "runtimeoptions.v1.Options", Value: []byte{0x0a, 0x01, 'x'}})
	for _, in := range [][]byte{nil, opts} {
		var out, errOut bytes.Buffer
		if code := RunInfo(bytes.NewReader(in), &out, &errOut); code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
		var info apitypes.RuntimeInfo
		if err := proto.Unmarshal(out.Bytes(), &info); err != nil {
			t.Fatal(err)
		}
		if info.Name != RuntimeName || info.Version.GetVersion() == "" {
			t.Errorf("name %q version %v", info.Name, info.Version)
		}
		if info.Features.GetTypeUrl() != featuresTypeURL {
			t.Errorf("features type %q", info.Features.GetTypeUrl())
		}
		var f features.Features
		if err := json.Unmarshal(info.Features.GetValue(), &f); err != nil || f.OCIVersionMax == "" || f.Linux == nil {
			t.Errorf("features %s: %v", info.Features.GetValue(), err)
		}
		if idmap := f.Linux.MountExtensions.IDMap; idmap == nil || idmap.Enabled == nil || *idmap.Enabled {
			t.Errorf("ID-mapped mounts must be declared unsupported: %+v", idmap)
		}
		if (len(in) > 0) != (info.Options != nil) {
			t.Errorf("options in %d bytes, echoed %v", len(in), info.Options)
		}
	}
	var out, errOut bytes.Buffer
	if code := RunInfo(strings.NewReader("\xff\xff not protobuf"), &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "runtime options") {
		t.Errorf("garbage on stdin: exit %d, %q", code, errOut.String())
	}
}

func TestInfoRequested(t *testing.T) {
	if !InfoRequested([]string{"-info"}) || InfoRequested([]string{"-namespace", "k8s.io", "-id", "x", "start"}) {
		t.Error("InfoRequested")
	}
}

// TestStartRefusesSandboxAPI: containerd 2.x's Sandbox API starts the
// shim in a bundle without config.json; Start says which setting to
// change instead of "open config.json: no such file or directory".
func TestStartRefusesSandboxAPI(t *testing.T) {
	t.Chdir(t.TempDir())
	_, err := NewManager().Start(context.Background(), "pod", shim.StartOpts{})
	if err == nil || !strings.Contains(err.Error(), `sandboxer = "shim"`) || !errdefs.IsNotImplemented(err) {
		t.Fatalf("Start in a bundle without config.json: %v", err)
	}
}
