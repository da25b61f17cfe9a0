package sandbox

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/stats"
)

// Sample reads what the metrics endpoint reports for the sandbox: the
// guest's memory, each container's guest cgroup, and the host processes
// serving the VM (every process in the sandbox cgroup, plus QEMU and
// virtiofsd themselves in case there is no cgroup).
func (s *Sandbox) Sample(ctx context.Context) (stats.Sample, error) {
	boot, current, requested := s.memoryFigures()
	s.mu.Lock()
	ids := make([]string, 0, len(s.mounts))
	for id := range s.mounts {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	sort.Strings(ids)
	out := stats.Sample{GuestBootBytes: uint64(boot) << 20, GuestCurrentBytes: uint64(current) << 20, GuestRequestedBytes: uint64(requested) << 20}
	if es := s.ElasticStatus(); es.Enabled {
		out.Elastic = &stats.ElasticSample{Grows: es.Grows, Shrinks: es.Shrinks, Refusals: es.Refusals,
			GrownBytes: es.GrownBytes, ShrunkBytes: es.ShrunkBytes,
			FloorBytes: uint64(es.FloorMiB) << 20, CeilingBytes: uint64(es.CeilingMiB) << 20}
	}
	if s.cfg.Cgroup.Manager != config.CgroupManagerNone {
		s.mu.Lock()
		out.CgroupMemoryLimitBytes = uint64(s.limitsLocked().MemoryBytes)
		s.mu.Unlock()
	}
	if isClosed(s.vmm.Done()) {
		return out, fmt.Errorf("the VM has exited")
	}
	for _, id := range ids {
		st, err := s.ContainerStats(ctx, id)
		if err != nil {
			continue // exited or being deleted: not an error of the sandbox
		}
		out.Containers = append(out.Containers, stats.ContainerSample{ID: id, Stats: st})
	}
	pids := map[int]bool{s.vmm.Pid(): true, s.virtiofsd.cmd.Process.Pid: true}
	if cp, err := s.cgroup.Pids(ctx); err == nil {
		for _, p := range cp {
			pids[p] = true
		}
	}
	for pid := range pids {
		if p, err := readProcess(pid); err == nil {
			out.Processes = append(out.Processes, p)
		}
	}
	sort.Slice(out.Processes, func(i, j int) bool { return out.Processes[i].Pid < out.Processes[j].Pid })
	out.Interfaces = s.networkSample()
	return out, nil
}

// memoryFigures are the VM's memory at boot, now and last requested, in
// MiB. A resize holds the memory lock for as long as it takes (seconds);
// a scrape does not wait for it but reports the figures of the previous
// scrape, so they lag by one resize at most.
func (s *Sandbox) memoryFigures() (boot, current, requested int) {
	boot = s.memory.limits.BootMiB // set once, in Create
	if s.memory.mu.TryLock() {
		current, requested = s.memory.currentMiB, s.memory.requestedMiB
		s.memory.mu.Unlock()
		s.mu.Lock()
		s.lastMemMiB = [2]int{current, requested}
		s.mu.Unlock()
		return boot, current, requested
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastMemMiB == [2]int{} {
		return boot, boot, boot
	}
	return boot, s.lastMemMiB[0], s.lastMemMiB[1]
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// readProcess reads one process's memory, threads and descriptors from
// /proc. smaps_rollup (Linux 4.14+) gives PSS, which counts the guest's
// RAM, shared between QEMU and virtiofsd, once across the two.
func readProcess(pid int) (stats.ProcessSample, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	p := stats.ProcessSample{Pid: pid}
	comm, err := os.ReadFile(dir + "/comm")
	if err != nil {
		return p, err
	}
	p.Name = strings.TrimSpace(string(comm))
	if f, err := os.Open(dir + "/smaps_rollup"); err == nil {
		m, _ := stats.ParseSmapsRollup(f)
		p.RSSBytes, p.PSSBytes = m.Rss, m.Pss
		f.Close()
	}
	if f, err := os.Open(dir + "/status"); err == nil {
		p.Threads, _ = stats.ParseStatusThreads(f)
		f.Close()
	}
	if fds, err := os.ReadDir(dir + "/fd"); err == nil {
		p.FDs = len(fds)
	}
	return p, nil
}
