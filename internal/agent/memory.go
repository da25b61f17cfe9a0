package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// Hot-added memory arrives in the guest as new memory blocks
// (/sys/devices/system/memory/memoryN) that stay offline unless something
// onlines them: the kernel's auto_online_blocks default is "offline" in
// many builds (Debian's included), and Berth must not depend on it. The
// agent onlines blocks itself, as soon as the kernel announces them with a
// uevent, because virtio-mem stops plugging further blocks while too much
// of what it plugged is still offline.
//
// Blocks are onlined movable where possible: only memory in ZONE_MOVABLE
// can be offlined and unplugged again when a sandbox shrinks. But the
// kernel cannot put its own data there, including the page structures
// (1/64 of all memory) that every further hot-add allocates. So when the
// free memory outside ZONE_MOVABLE falls below kernelReserve, blocks are
// onlined as kernel memory instead, which keeps later hot-adds possible:
// the policy the kernel's own auto-movable onlining follows. Without it a
// large grow (16 GiB into a 256 MiB guest) exhausts the kernel's memory
// and the guest dies. The host learns how much is movable from MemoryInfo.

// memoryOnliner onlines memory blocks under a sysfs root.
type memoryOnliner struct {
	sysRoot string // "/" in the guest; a fake tree in tests
	mu      sync.Mutex
}

func (o *memoryOnliner) memDir() string { return filepath.Join(o.sysRoot, "sys/devices/system/memory") }

// onlineAll onlines every offline block and returns the errors by block.
func (o *memoryOnliner) onlineAll() (online, offline int, errs []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	entries, err := os.ReadDir(o.memDir())
	if err != nil {
		return 0, 0, []string{err.Error()}
	}
	sort.Slice(entries, func(i, j int) bool { return blockNum(entries[i].Name()) < blockNum(entries[j].Name()) })
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "memory") || blockNum(e.Name()) < 0 {
			continue
		}
		state := filepath.Join(o.memDir(), e.Name(), "state")
		b, err := os.ReadFile(state)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == "online" {
			online++
			continue
		}
		if _, err := os.Stat(state); err != nil {
			continue // being removed (an unplug offlined it): not ours to online
		}
		movable := o.kernelFree() >= kernelReserve
		if err := onlineBlock(state, movable); err != nil {
			offline++
			errs = append(errs, fmt.Sprintf("%s: %v", e.Name(), err))
			continue
		}
		online++
	}
	return online, offline, errs
}

func blockNum(name string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "memory"))
	if err != nil {
		return -1
	}
	return n
}

// kernelReserve is the free non-movable memory the onliner keeps: enough
// for the page structures of a few GiB more and the kernel's own needs.
const kernelReserve = 96 << 20

// kernelFree reads free memory outside ZONE_MOVABLE from /proc/zoneinfo.
func (o *memoryOnliner) kernelFree() uint64 {
	f, err := os.Open(filepath.Join(o.sysRoot, "proc/zoneinfo"))
	if err != nil {
		return kernelReserve // unknown: do not force kernel onlining
	}
	defer f.Close()
	_, free := zoneBytes(f)
	return free
}

// onlineBlock onlines one block: movable if asked and the kernel allows
// it, as kernel memory otherwise.
func onlineBlock(statePath string, movable bool) error {
	if !movable {
		if err := os.WriteFile(statePath, []byte("online_kernel"), 0); err == nil {
			return nil
		}
	}
	err := os.WriteFile(statePath, []byte("online_movable"), 0)
	if err == nil {
		return nil
	}
	if err2 := os.WriteFile(statePath, []byte("online"), 0); err2 != nil {
		return fmt.Errorf("online_movable: %v; online: %w", err, err2)
	}
	return nil
}

// watchUevents onlines memory as the kernel adds it. It reads kernel
// uevents (NETLINK_KOBJECT_UEVENT) and rescans on every memory "add";
// the rescan also catches blocks added before the socket existed.
func (o *memoryOnliner) watchUevents(ctx context.Context) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return fmt.Errorf("uevent socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "uevent")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		return fmt.Errorf("bind uevent socket: %w", err)
	}
	// A large receive buffer: a big virtio-mem grow announces dozens of
	// blocks at once.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	o.onlineAll()
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				o.onlineAll() // events were dropped: rescan
				continue
			}
			return err
		}
		if isMemoryAdd(buf[:n]) {
			o.onlineAll()
		}
	}
	return ctx.Err()
}

// isMemoryAdd reports whether a uevent announces a new memory block:
// "add@/devices/system/memory/memoryN" followed by NUL-separated
// KEY=VALUE pairs.
func isMemoryAdd(msg []byte) bool {
	head, _, _ := bytes.Cut(msg, []byte{0})
	return bytes.HasPrefix(head, []byte("add@/devices/system/memory/memory"))
}

// memoryInfo reads /proc/meminfo and zone information.
func (o *memoryOnliner) memoryInfo() *api.MemoryInfo {
	info := &api.MemoryInfo{}
	if f, err := os.Open(filepath.Join(o.sysRoot, "proc/meminfo")); err == nil {
		m := parseMeminfo(f)
		f.Close()
		info.MemTotalBytes, info.MemFreeBytes, info.MemAvailableBytes = m["MemTotal"], m["MemFree"], m["MemAvailable"]
	}
	if b, err := os.ReadFile(filepath.Join(o.memDir(), "block_size_bytes")); err == nil {
		info.BlockSizeBytes, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	}
	if b, err := os.ReadFile(filepath.Join(o.memDir(), "auto_online_blocks")); err == nil {
		info.AutoOnlineBlocks = strings.TrimSpace(string(b))
	}
	if f, err := os.Open(filepath.Join(o.sysRoot, "proc/zoneinfo")); err == nil {
		info.MovableBytes, info.KernelFreeBytes = zoneBytes(f)
		f.Close()
	}
	return info
}

// parseMeminfo returns /proc/meminfo's values in bytes.
func parseMeminfo(r io.Reader) map[string]uint64 {
	out := map[string]uint64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	return out
}

// zoneBytes reads /proc/zoneinfo (4 KiB pages): the memory managed in
// Movable zones, and the free memory in all other zones.
func zoneBytes(r io.Reader) (movable, kernelFree uint64) {
	inMovable := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "Node ") {
			f := strings.Fields(line)
			inMovable = len(f) > 0 && f[len(f)-1] == "Movable"
			continue
		}
		f := strings.Fields(line)
		switch {
		case inMovable && len(f) == 2 && f[0] == "managed":
			n, _ := strconv.ParseUint(f[1], 10, 64)
			movable += n * 4096
		case !inMovable && len(f) == 3 && f[0] == "pages" && f[1] == "free":
			n, _ := strconv.ParseUint(f[2], 10, 64)
			kernelFree += n * 4096
		}
	}
	return movable, kernelFree
}

// OnlineMemory onlines what is offline and reports the guest's memory.
func (s *Service) OnlineMemory(ctx context.Context, _ *emptypb.Empty) (*api.MemoryInfo, error) {
	online, offline, errs := s.memory.onlineAll()
	info := s.memory.memoryInfo()
	info.BlocksOnline, info.BlocksOffline, info.Errors = uint32(online), uint32(offline), errs
	info.KernelBlocks = s.memory.kernelBlocks()
	return info, nil
}

// kernelBlocks lists online blocks that are not movable.
//
// It reads a block's state before its valid_zones, and valid_zones only
// of online blocks: for an offline block the kernel computes the zones
// the block could join (zone_for_pfn_range), and Debian's 6.1 kernel
// oopses there with a NULL dereference while DIMMs are being hot-added,
// killing the reader. For an online block valid_zones just names the zone
// it is in. The onliner's lock keeps a block from changing state between
// the two reads on the agent's side.
func (o *memoryOnliner) kernelBlocks() []uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	entries, err := os.ReadDir(o.memDir())
	if err != nil {
		return nil
	}
	var out []uint64
	for _, e := range entries {
		n := blockNum(e.Name())
		if n < 0 || !strings.HasPrefix(e.Name(), "memory") {
			continue
		}
		state, err := os.ReadFile(filepath.Join(o.memDir(), e.Name(), "state"))
		if err != nil || strings.TrimSpace(string(state)) != "online" {
			continue
		}
		zones, err := os.ReadFile(filepath.Join(o.memDir(), e.Name(), "valid_zones"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(zones)) != "Movable" {
			out = append(out, uint64(n))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// WatchMemory onlines hot-added memory until ctx ends; Serve runs it.
func (s *Service) WatchMemory(ctx context.Context) {
	for ctx.Err() == nil {
		if err := s.memory.watchUevents(ctx); err != nil && ctx.Err() == nil {
			log(ctx).WithError(err).Warn("memory uevents; polling instead")
			// Without uevents, poll: slower, but memory still comes
			// online without the host asking.
			for i := 0; i < 60 && ctx.Err() == nil; i++ {
				s.memory.onlineAll()
				time.Sleep(500 * time.Millisecond)
			}
		}
	}
}
