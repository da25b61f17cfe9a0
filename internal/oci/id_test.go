package oci_test

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/oci/ocitest"
)

func TestValidateIDRejectsTraversal(t *testing.T) {
	for _, id := range ocitest.TraversalIDs {
		err := oci.ValidateID("sandbox id", id)
		if err == nil {
			t.Errorf("ValidateID(%q) accepted it", id)
			continue
		}
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "sandbox id") {
			t.Errorf("ValidateID(%q) = %v, want an InvalidArgument naming the sandbox id", id, err)
		}
	}
}

func TestValidateIDAcceptsContainerdIDs(t *testing.T) {
	for _, id := range []string{
		"a", "run-1a2b", "abc.DEF_1", "exec-3", strings.Repeat("f", 64), strings.Repeat("x", oci.MaxIDLength),
		"nginx-7c9d.v1",
	} {
		if err := oci.ValidateID("container id", id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
}

func TestIsReadOnly(t *testing.T) {
	for opts, want := range map[string]bool{"": false, "rbind,ro": true, "ro,rw": false, "rw,ro": true, "rbind,rprivate": false} {
		if got := oci.IsReadOnly(specs.Mount{Options: strings.Split(opts, ",")}); got != want {
			t.Errorf("IsReadOnly(%q) = %v, want %v", opts, got, want)
		}
	}
}
