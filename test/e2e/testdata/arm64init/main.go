// Command arm64init is the /init of the initramfs that the arm64 end-to-end
// test boots (test/e2e/arm64_test.go). It stands in for berth-agent's
// memory onlining: it mounts /proc, /sys and /dev, onlines every memory
// block that shows up offline (online_movable, falling back to online, as
// the agent does), and prints the guest's MemTotal to the console every
// 500 ms. It never exits: PID 1 exiting panics the kernel.
//
// Console lines, which the test reads:
//
//	ARM64INIT acpi=<yes|no> block_size=<hex bytes>
//	ONLINE memory<N> <online_movable|online>
//	ONLINE-FAIL memory<N> <error>
//	MEMTOTAL <kB>
package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && err != unix.EBUSY {
			fmt.Printf("ARM64INIT mount %s: %v\n", m.dst, err)
		}
	}
	acpi := "no"
	if _, err := os.Stat("/sys/firmware/acpi/tables"); err == nil {
		acpi = "yes"
	}
	bs, _ := os.ReadFile("/sys/devices/system/memory/block_size_bytes")
	fmt.Printf("ARM64INIT acpi=%s block_size=%s\n", acpi, strings.TrimSpace(string(bs)))

	for {
		onlineBlocks()
		fmt.Printf("MEMTOTAL %d\n", memTotalKiB())
		time.Sleep(500 * time.Millisecond)
	}
}

// onlineBlocks onlines every offline memory block, lowest first: a block
// can only be onlined movable if no block above it is in ZONE_NORMAL.
func onlineBlocks() {
	states, _ := filepath.Glob("/sys/devices/system/memory/memory*/state")
	sort.Slice(states, func(i, j int) bool { return blockNum(states[i]) < blockNum(states[j]) })
	for _, st := range states {
		b, err := os.ReadFile(st)
		if err != nil || strings.TrimSpace(string(b)) != "offline" {
			continue
		}
		name := filepath.Base(filepath.Dir(st))
		var werr error
		for _, how := range []string{"online_movable", "online"} {
			if werr = os.WriteFile(st, []byte(how), 0); werr == nil {
				fmt.Printf("ONLINE %s %s\n", name, how)
				break
			}
		}
		if werr != nil {
			fmt.Printf("ONLINE-FAIL %s %v\n", name, werr)
		}
	}
}

func blockNum(state string) int {
	var n int
	fmt.Sscanf(filepath.Base(filepath.Dir(state)), "memory%d", &n)
	return n
}

func memTotalKiB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int
		if n, _ := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); n == 1 {
			return kb
		}
	}
	return -1
}
