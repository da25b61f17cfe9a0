package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// freePageReportingOrder is the smallest free block, as a power of two
// pages, the guest reports to the host for discarding: order 5, 128 KiB.
//
// Linux 6.1 sets the order to pageblock_order when the balloon driver
// registers (order 10, 4 MiB, on the Berth kernel, which has no hugetlb),
// and overrides page_reporting.page_reporting_order given on the kernel
// command line. A free block that large is rare after a workload ran next
// to the agent: the agent's own allocations while elastic memory sampled
// (every 100 ms when this was measured) land among the workload's pages,
// and after the workload
// freed ~410 MiB of a 1 GiB guest, 100-125 MiB stayed free in blocks
// below 4 MiB, never reported. QEMU's RSS stayed 84 MiB above idle.
// Measured after that free (bench/freepages, QEMU RSS above its ~196 MiB
// idle): order 10: +84 MiB, 9: +54, 7: +28, 5: +10, 3: +10, within 4 s
// each time. Order 5 is the largest that gives back all but 10 MiB; each
// report carries at most 32 blocks, so the 410 MiB cost ~100 reports.
const freePageReportingOrder = 5

// reportSmallerFreeBlocks lowers the page reporting order under sysRoot
// (the guest's /sys). It must run after the balloon driver registered
// (the built-in driver before /init, a module once loaded), which would
// otherwise set it back. A kernel without free page reporting has no
// such parameter: nothing to do.
func reportSmallerFreeBlocks(sysRoot string) error {
	p := filepath.Join(sysRoot, "module/page_reporting/parameters/page_reporting_order")
	cur, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the free page reporting order: %w", err)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(cur))); err == nil && n <= freePageReportingOrder {
		return nil
	}
	if err := os.WriteFile(p, []byte(strconv.Itoa(freePageReportingOrder)), 0); err != nil {
		return fmt.Errorf("set the free page reporting order to %d: %w", freePageReportingOrder, err)
	}
	return nil
}
