package agent

import (
	"time"

	"golang.org/x/sys/unix"

	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMeminfo(t *testing.T) {
	m := parseMeminfo(strings.NewReader("MemTotal:         222620 kB\nMemFree:          150000 kB\nHugePages_Total:       0\n"))
	if m["MemTotal"] != 222620*1024 || m["MemFree"] != 150000*1024 || m["HugePages_Total"] != 0 {
		t.Fatalf("%v", m)
	}
}

func TestMovableBytes(t *testing.T) {
	zi := `Node 0, zone      DMA
  pages free     3000
        managed  3840
Node 0, zone   Normal
        managed  50000
Node 0, zone  Movable
  pages free     100
        managed  32768
`
	movable, free := zoneBytes(strings.NewReader(zi))
	if movable != 32768*4096 || free != 3000*4096 {
		t.Fatalf("movable = %d, kernel free = %d", movable, free)
	}
}

func TestIsMemoryAdd(t *testing.T) {
	if !isMemoryAdd([]byte("add@/devices/system/memory/memory40\x00ACTION=add\x00SUBSYSTEM=memory")) {
		t.Error("memory add not recognised")
	}
	if isMemoryAdd([]byte("online@/devices/system/memory/memory40\x00ACTION=online")) || isMemoryAdd([]byte("add@/devices/virtual/block/loop0\x00")) {
		t.Error("other uevents taken for memory adds")
	}
}

// A fake sysfs: the kernel would refuse "online_movable" for some blocks;
// a plain file accepts anything, so this checks the walk and the
// accounting, not the kernel's zone rules.
func TestOnlineAll(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "sys/devices/system/memory")
	for name, state := range map[string]string{"memory0": "online", "memory1": "offline", "memory40": "offline"} {
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "state"), []byte(state+"\n"), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "block_size_bytes"), []byte("8000000\n"), 0o644)
	o := &memoryOnliner{sysRoot: root}
	online, offline, errs := o.onlineAll()
	if online != 3 || offline != 0 || len(errs) != 0 {
		t.Fatalf("online=%d offline=%d errs=%v", online, offline, errs)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "memory40", "state"))
	if string(b) != "online_movable" {
		t.Errorf("block 40 state %q, want online_movable", b)
	}
	if info := o.memoryInfo(); info.BlockSizeBytes != 128<<20 {
		t.Errorf("block size %d", info.BlockSizeBytes)
	}
}

// Reading valid_zones of an offline block makes Debian's 6.1 kernel oops
// during DIMM hot-add (zone_for_pfn_range <- valid_zones_show), which once
// killed the agent and hung CI. kernelBlocks must read it only of online
// blocks. The offline block's valid_zones here is a FIFO with no writer:
// opening it blocks, so reading it would hang the test.
func TestKernelBlocksNeverReadsValidZonesOfOfflineBlocks(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "sys/devices/system/memory")
	blocks := map[string][2]string{
		"memory0": {"online", "Normal"},
		"memory1": {"online", "Movable"},
		"memory2": {"offline", ""},
		"memory3": {"online", "Normal Movable"},
	}
	for name, b := range blocks {
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "state"), []byte(b[0]+"\n"), 0o644)
		zones := filepath.Join(dir, name, "valid_zones")
		if b[0] == "offline" {
			if err := unix.Mkfifo(zones, 0o600); err != nil {
				t.Fatal(err)
			}
			continue
		}
		os.WriteFile(zones, []byte(b[1]+"\n"), 0o644)
	}
	o := &memoryOnliner{sysRoot: root}
	done := make(chan []uint64, 1)
	go func() { done <- o.kernelBlocks() }()
	select {
	case got := <-done:
		if len(got) != 2 || got[0] != 0 || got[1] != 3 {
			t.Errorf("kernel blocks = %v, want [0 3]", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("kernelBlocks read valid_zones of an offline block")
	}
}
