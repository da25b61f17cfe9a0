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
	s.mu.Lock()
	vmBytes := uint64(s.vmMiB) << 20
	boot := uint64(s.bootMiB) << 20
	ids := make([]string, 0, len(s.mounts))
	for id := range s.mounts {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	sort.Strings(ids)
	out := stats.Sample{GuestBootBytes: boot, GuestCurrentBytes: vmBytes, GuestRequestedBytes: vmBytes}
	if s.cfg.Cgroup.Manager != config.CgroupManagerNone {
		out.CgroupMemoryLimitBytes = uint64(s.cfg.SandboxMemoryLimitBytes(int(vmBytes >> 20)))
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
	return out, nil
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
		p.RSSBytes, p.PSSBytes, _ = stats.ParseSmapsRollup(f)
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
