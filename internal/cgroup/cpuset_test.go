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
