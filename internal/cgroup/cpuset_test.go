package cgroup

import (
	"bytes"
	"testing"
)

func TestCPUListsParseUnionAndMask(t *testing.T) {
	got, err := UnionCPULists("4-5", "1,3", "5-6", "")
	if err != nil || got != "1,3-6" {
		t.Errorf("union = %q, %v; want 1,3-6", got, err)
	}
	for _, bad := range []string{"a", "3-1", "-1", "0-4294967295", "8192"} {
		if _, err := ParseCPUList(bad); err == nil {
			t.Errorf("ParseCPUList(%q) accepted", bad)
		}
	}
	if m, err := cpuMask("0,9-10"); err != nil || !bytes.Equal(m, []byte{0x01, 0x06}) {
		t.Errorf("cpuMask = %x, %v; want 0106", m, err)
	}
}

// TestSystemdScopeGetsAllowedCPUs: the systemd driver pins with
// AllowedCPUs, and leaves it out when the pod is not pinned.
func TestSystemdScopeGetsAllowedCPUs(t *testing.T) {
	allowed := func(l Limits) []byte {
		for _, p := range unitLimits(l) {
			if p.Name == "AllowedCPUs" {
				return p.Value.Value().([]byte)
			}
		}
		return nil
	}
	if m := allowed(Limits{CPUs: "0,9-10"}); !bytes.Equal(m, []byte{0x01, 0x06}) {
		t.Errorf("AllowedCPUs = %x, want 0106", m)
	}
	if m := allowed(Limits{MemoryBytes: 1 << 30}); m != nil {
		t.Errorf("unpinned: AllowedCPUs = %x, want none", m)
	}
}
