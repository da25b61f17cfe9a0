package oci

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCheckHostNamespaces(t *testing.T) {
	all := func(drop specs.LinuxNamespaceType, path string) *specs.Spec {
		s := &specs.Spec{Linux: &specs.Linux{}}
		for _, ns := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace} {
			if ns == drop {
				continue
			}
			e := specs.LinuxNamespace{Type: ns}
			if ns == specs.PIDNamespace || ns == specs.IPCNamespace {
				e.Path = path
			}
			s.Linux.Namespaces = append(s.Linux.Namespaces, e)
		}
		return s
	}
	for _, tc := range []struct {
		name         string
		spec         *specs.Spec
		joinsSandbox bool
		want         string // "" : accepted
	}{
		{"pod sandbox", all("", ""), false, ""},
		{"host network only", all(specs.NetworkNamespace, ""), false, ""},
		{"hostPID pod", all(specs.PIDNamespace, ""), false, "hostPID"},
		{"hostIPC pod", all(specs.IPCNamespace, ""), false, "hostIPC"},
		{"app container of a hostPID pod", all(specs.PIDNamespace, "/proc/42/ns/ipc"), true, "hostPID"},
		{"app container joining its sandbox", all("", "/proc/42/ns/pid"), true, ""},
		{"plain container joining a host process", all("", "/proc/1/ns/pid"), false, "cannot join"},
		{"no linux section", &specs.Spec{}, false, ""},
	} {
		err := CheckHostNamespaces(tc.spec, tc.joinsSandbox)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
