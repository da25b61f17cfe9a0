package shim

import (
	"encoding/json"
	"fmt"
	"io"

	apitypes "github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Version is the shim's version as RuntimeInfo reports it.
const Version = "0.1.0"

// featuresTypeURL is the type URL containerd 2.x registers for the
// runtime-spec features document (core/runtime/typeurl.go); RuntimeInfo's
// Features must carry it for containerd to decode them.
const featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// InfoRequested reports whether the shim was run as containerd 2.x's
// runtime-features query, `containerd-shim-berth-v2 -info`. containerd 1.7's
// shim library, which parses the other flags, does not know it and would
// exit with "flag provided but not defined".
func InfoRequested(args []string) bool {
	for _, a := range args {
		if a == "-info" || a == "--info" || a == "-info=true" || a == "--info=true" {
			return true
		}
	}
	return false
}

// RunInfo answers -info as containerd 2.x's runc shim does: the runtime
// options (a protobuf Any, possibly empty) come on stdin, a
// protobuf-encoded containerd.types.RuntimeInfo goes to stdout. It returns
// the process's exit code.
func RunInfo(stdin io.Reader, stdout, stderr io.Writer) int {
	b, err := Info(stdin)
	if err == nil {
		_, err = stdout.Write(b)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: -info: %v\n", RuntimeName, err)
		return 1
	}
	return 0
}

// maxInfoOptions bounds what -info reads from stdin: runtime options are a
// few hundred bytes.
const maxInfoOptions = 1 << 20

// Info builds the encoded RuntimeInfo for the options read from r.
func Info(r io.Reader) ([]byte, error) {
	info := &apitypes.RuntimeInfo{
		Name:    RuntimeName,
		Version: &apitypes.RuntimeVersion{Version: Version},
	}
	in, err := io.ReadAll(io.LimitReader(r, maxInfoOptions))
	if err != nil {
		return nil, fmt.Errorf("read runtime options: %w", err)
	}
	if len(in) > 0 {
		// Echoed back as the runc shim does: they are the options
		// containerd would start the shim with.
		var opts anypb.Any
		if err := proto.Unmarshal(in, &opts); err != nil {
			return nil, fmt.Errorf("runtime options on stdin: %w", err)
		}
		if opts.GetTypeUrl() != "" {
			info.Options = &opts
		}
	}
	// A registered Go type that is not a protobuf travels as JSON
	// (typeurl), which is how containerd decodes it.
	f, err := json.Marshal(runtimeFeatures())
	if err != nil {
		return nil, err
	}
	info.Features = &anypb.Any{TypeUrl: featuresTypeURL, Value: f}
	return proto.Marshal(info)
}

// runtimeFeatures is what Berth does with an OCI spec (runtime-spec
// features.md): only what is really carried into the guest is claimed.
// Hooks, AppArmor and SELinux labels are dropped on the way in
// (oci.ForGuest); containers get cgroup v2 in the guest; ID-mapped mounts
// are explicitly unsupported, so that containerd refuses a pod that needs
// them instead of Berth silently ignoring the mapping.
func runtimeFeatures() *features.Features {
	no, yes := false, true
	return &features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		Hooks:         []string{},
		Linux: &features.Linux{
			Namespaces: []string{
				string(specs.CgroupNamespace), string(specs.IPCNamespace), string(specs.MountNamespace),
				string(specs.NetworkNamespace), string(specs.PIDNamespace), string(specs.UTSNamespace),
			},
			Cgroup:          &features.Cgroup{V1: &no, V2: &yes, Systemd: &no, SystemdUser: &no},
			Apparmor:        &features.Apparmor{Enabled: &no},
			Selinux:         &features.Selinux{Enabled: &no},
			MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &no}},
		},
	}
}
