package config

import (
	"errors"
	"strings"
	"testing"
)

func TestWithAnnotations(t *testing.T) {
	base := Default()
	base.Runtime.EnableAnnotations = []string{"hypervisor.default_memory", "hypervisor.default_maxmemory"}
	for _, tc := range []struct {
		name    string
		ann     map[string]string
		wantErr string // substring; "" = success
		wantMiB int
	}{
		{"no berth annotations", map[string]string{"io.kubernetes.cri.sandbox-id": "x"}, "", 256},
		{"allowed and enabled", map[string]string{AnnotationPrefix + "hypervisor.default_memory": "512"}, "", 512},
		{"never settable: a path", map[string]string{AnnotationPrefix + "hypervisor.path": "/tmp/evil"}, "cannot be set by pods", 0},
		{"never settable: kernel params", map[string]string{AnnotationPrefix + "hypervisor.kernel_params": "init=/bin/sh"}, "cannot be set by pods", 0},
		{"annotatable but not enabled", map[string]string{AnnotationPrefix + "hypervisor.default_vcpus": "2"}, "runtime.enable_annotations", 0},
		{"bad value", map[string]string{AnnotationPrefix + "hypervisor.default_memory": "lots"}, "lots", 0},
		{"out of bounds", map[string]string{AnnotationPrefix + "hypervisor.default_memory": "64"}, "hypervisor.default_memory", 0},
		{"ceiling lowered", map[string]string{AnnotationPrefix + "hypervisor.default_maxmemory": "1024"}, "", 256},
		{"ceiling raised", map[string]string{AnnotationPrefix + "hypervisor.default_maxmemory": "65536"}, "may only lower hypervisor.default_maxmemory", 0},
		{"ceiling below boot", map[string]string{AnnotationPrefix + "hypervisor.default_maxmemory": "128"}, "hypervisor.default_maxmemory", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := base.WithAnnotations(tc.ann)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want one mentioning %q and matching ErrInvalid", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Hypervisor.DefaultMemoryMiB != tc.wantMiB {
				t.Errorf("default_memory = %d, want %d", got.Hypervisor.DefaultMemoryMiB, tc.wantMiB)
			}
		})
	}
	if got, err := base.WithAnnotations(map[string]string{AnnotationPrefix + "hypervisor.default_maxmemory": "1024"}); err != nil || got.Hypervisor.DefaultMaxMemoryMiB != 1024 {
		t.Errorf("lowered ceiling: %v %v", got, err)
	}
	if base.Hypervisor.DefaultMemoryMiB != 256 || base.Hypervisor.DefaultMaxMemoryMiB != 16384 {
		t.Error("WithAnnotations modified the base configuration")
	}
}
