package stats

import (
	"bufio"
	"context"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// Sample is one reading of a sandbox, gathered by whoever owns it (the
// shim, through internal/sandbox). Collector turns it into Prometheus
// metrics; it does no I/O itself.
type Sample struct {
	// Guest memory: what the VM booted with, what it has now, and what
	// was last asked for (they differ while a resize is under way).
	GuestBootBytes, GuestCurrentBytes, GuestRequestedBytes uint64
	// CgroupMemoryLimitBytes is the host cgroup's limit (0: none).
	CgroupMemoryLimitBytes uint64
	// Elastic is the elastic memory controller; nil when it is off.
	Elastic    *ElasticSample
	Containers []ContainerSample
	Processes  []ProcessSample
	// Interfaces are the pod network's interfaces, counted on the host.
	Interfaces []InterfaceSample
}

// ElasticSample are the elastic memory controller's counters and bounds.
type ElasticSample struct {
	Grows, Shrinks, Refusals uint64
	GrownBytes, ShrunkBytes  uint64
	FloorBytes, CeilingBytes uint64
}

// InterfaceSample is one pod interface's traffic, from the pod's point of
// view (receive: towards the pod).
type InterfaceSample struct {
	Name                                    string
	RxBytes, RxPackets, RxErrors, RxDropped uint64
	TxBytes, TxPackets, TxErrors, TxDropped uint64
}

// ContainerSample is one container's guest cgroup reading.
type ContainerSample struct {
	ID    string
	Stats *api.StatsResponse
}

// ProcessSample is one host process of the sandbox (QEMU, virtiofsd).
type ProcessSample struct {
	Name     string // comm: "qemu-system-x86", "virtiofsd"
	Pid      int
	RSSBytes uint64
	PSSBytes uint64
	Threads  int
	FDs      int
}

// Source produces samples; *sandbox.Sandbox is one (via the shim).
type Source interface {
	Sample(ctx context.Context) (Sample, error)
}

// Metric families, documented in docs/metrics.md. Every one carries
// sandbox_id.
var (
	descGuestMemory = prometheus.NewDesc("berth_guest_memory_bytes",
		"Guest (VM) memory: state=boot (booted with), current (has now), requested (last asked for).",
		[]string{"sandbox_id", "state"}, nil)
	descCgroupLimit = prometheus.NewDesc("berth_sandbox_cgroup_memory_limit_bytes",
		"Memory limit of the sandbox's host cgroup (VM memory + cgroup.overhead_memory).",
		[]string{"sandbox_id"}, nil)
	descWorkingSet = prometheus.NewDesc("berth_container_memory_working_set_bytes",
		"Container memory usage minus inactive file pages, as the kubelet computes it.",
		[]string{"sandbox_id", "container_id"}, nil)
	descUsage = prometheus.NewDesc("berth_container_memory_usage_bytes",
		"Container memory usage (memory.current, or memory.usage_in_bytes on v1) in the guest.",
		[]string{"sandbox_id", "container_id"}, nil)
	descCache = prometheus.NewDesc("berth_container_memory_cache_bytes",
		"Container page cache (file on v2, total_cache on v1) in the guest.",
		[]string{"sandbox_id", "container_id"}, nil)
	descCPU = prometheus.NewDesc("berth_container_cpu_seconds_total",
		"Container CPU time in the guest: mode=user, system, or total.",
		[]string{"sandbox_id", "container_id", "mode"}, nil)
	descPids = prometheus.NewDesc("berth_container_pids",
		"Processes in the container's guest cgroup.",
		[]string{"sandbox_id", "container_id"}, nil)
	descRSS = prometheus.NewDesc("berth_hypervisor_rss_bytes",
		"Resident set size of a host process of the sandbox (smaps_rollup Rss).",
		[]string{"sandbox_id", "process", "pid"}, nil)
	descPSS = prometheus.NewDesc("berth_hypervisor_pss_bytes",
		"Proportional set size of a host process of the sandbox (smaps_rollup Pss): shared guest memory counted once across QEMU and virtiofsd.",
		[]string{"sandbox_id", "process", "pid"}, nil)
	descThreads = prometheus.NewDesc("berth_hypervisor_threads",
		"Threads of a host process of the sandbox.",
		[]string{"sandbox_id", "process", "pid"}, nil)
	descFDs = prometheus.NewDesc("berth_hypervisor_fds",
		"Open file descriptors of a host process of the sandbox.",
		[]string{"sandbox_id", "process", "pid"}, nil)
	descNetBytes = prometheus.NewDesc("berth_pod_network_bytes_total",
		"Bytes through a pod interface, counted on the host: direction=receive (to the pod) or transmit (from the pod).",
		[]string{"sandbox_id", "interface", "direction"}, nil)
	descNetPackets = prometheus.NewDesc("berth_pod_network_packets_total",
		"Packets through a pod interface, counted on the host.",
		[]string{"sandbox_id", "interface", "direction"}, nil)
	descNetErrors = prometheus.NewDesc("berth_pod_network_errors_total",
		"Errors on a pod interface, counted on the host.",
		[]string{"sandbox_id", "interface", "direction"}, nil)
	descNetDropped = prometheus.NewDesc("berth_pod_network_dropped_total",
		"Packets dropped on a pod interface, counted on the host.",
		[]string{"sandbox_id", "interface", "direction"}, nil)
	descElasticChanges = prometheus.NewDesc("berth_memory_elastic_changes_total",
		"Elastic memory resizes of the VM: direction=grow or shrink.",
		[]string{"sandbox_id", "direction"}, nil)
	descElasticBytes = prometheus.NewDesc("berth_memory_elastic_moved_bytes_total",
		"Memory added to (direction=grow) or removed from (shrink) the VM by elastic memory.",
		[]string{"sandbox_id", "direction"}, nil)
	descElasticRefusals = prometheus.NewDesc("berth_memory_elastic_refusals_total",
		"Grows elastic memory refused because the host is too full (MemAvailable minus memory.host_reserve).",
		[]string{"sandbox_id"}, nil)
	descElasticBounds = prometheus.NewDesc("berth_memory_elastic_bound_bytes",
		"How far elastic memory may shrink (bound=floor) and grow (bound=ceiling) the VM.",
		[]string{"sandbox_id", "bound"}, nil)
	descUp = prometheus.NewDesc("berth_sandbox_up",
		"1 if the last sample of the sandbox succeeded, 0 if not.",
		[]string{"sandbox_id"}, nil)
)

// sampleTimeout bounds one scrape's sample: a guest that does not answer
// makes the sandbox report berth_sandbox_up 0, not a hung scrape.
const sampleTimeout = 10 * time.Second

// Collector is a prometheus.Collector for one sandbox.
type Collector struct {
	sandboxID string
	src       Source
	ctx       context.Context
}

// NewCollector collects from src on every scrape; ctx bounds each sample.
func NewCollector(ctx context.Context, sandboxID string, src Source) *Collector {
	return &Collector{sandboxID: sandboxID, src: src, ctx: ctx}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGuestMemory, descCgroupLimit, descWorkingSet, descUsage, descCache,
		descCPU, descPids, descRSS, descPSS, descThreads, descFDs, descUp,
		descNetBytes, descNetPackets, descNetErrors, descNetDropped,
		descElasticChanges, descElasticBytes, descElasticRefusals, descElasticBounds} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(c.ctx, sampleTimeout)
	defer cancel()
	s, err := c.src.Sample(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0, c.sandboxID)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1, c.sandboxID)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{c.sandboxID}, labels...)...)
	}
	gauge(descGuestMemory, float64(s.GuestBootBytes), "boot")
	gauge(descGuestMemory, float64(s.GuestCurrentBytes), "current")
	gauge(descGuestMemory, float64(s.GuestRequestedBytes), "requested")
	if s.CgroupMemoryLimitBytes > 0 {
		gauge(descCgroupLimit, float64(s.CgroupMemoryLimitBytes))
	}
	if e := s.Elastic; e != nil {
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{c.sandboxID}, labels...)...)
		}
		counter(descElasticChanges, e.Grows, "grow")
		counter(descElasticChanges, e.Shrinks, "shrink")
		counter(descElasticBytes, e.GrownBytes, "grow")
		counter(descElasticBytes, e.ShrunkBytes, "shrink")
		counter(descElasticRefusals, e.Refusals)
		gauge(descElasticBounds, float64(e.FloorBytes), "floor")
		gauge(descElasticBounds, float64(e.CeilingBytes), "ceiling")
	}
	for _, ct := range s.Containers {
		r := ct.Stats
		gauge(descWorkingSet, float64(WorkingSet(r)), ct.ID)
		gauge(descUsage, float64(r.MemoryUsageBytes), ct.ID)
		gauge(descCache, float64(Cache(r)), ct.ID)
		gauge(descPids, float64(r.PidsCurrent), ct.ID)
		for mode, usec := range map[string]uint64{"user": r.CpuUserUsec, "system": r.CpuSystemUsec, "total": r.CpuUsageUsec} {
			ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, float64(usec)/1e6, c.sandboxID, ct.ID, mode)
		}
	}
	for _, n := range s.Interfaces {
		counter := func(d *prometheus.Desc, rx, tx uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(rx), c.sandboxID, n.Name, "receive")
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(tx), c.sandboxID, n.Name, "transmit")
		}
		counter(descNetBytes, n.RxBytes, n.TxBytes)
		counter(descNetPackets, n.RxPackets, n.TxPackets)
		counter(descNetErrors, n.RxErrors, n.TxErrors)
		counter(descNetDropped, n.RxDropped, n.TxDropped)
	}
	for _, p := range s.Processes {
		pid := strconv.Itoa(p.Pid)
		gauge(descRSS, float64(p.RSSBytes), p.Name, pid)
		gauge(descPSS, float64(p.PSSBytes), p.Name, pid)
		gauge(descThreads, float64(p.Threads), p.Name, pid)
		gauge(descFDs, float64(p.FDs), p.Name, pid)
	}
}

// Cache is the container's page cache: file on v2, total_cache on v1.
func Cache(r *api.StatsResponse) uint64 {
	if r.CgroupVersion == 1 {
		return r.GetMemoryStat()["total_cache"]
	}
	return r.GetMemoryStat()["file"]
}

// SmapsRollup is a process's memory from /proc/<pid>/smaps_rollup, in
// bytes. Pss splits into anonymous, shared-memory (for QEMU: the guest's
// RAM) and file pages (Linux 5.9+ lists the parts).
type SmapsRollup struct {
	Rss, Pss, PssAnon, PssShmem, PssFile uint64
}

// ParseSmapsRollup reads /proc/<pid>/smaps_rollup.
func ParseSmapsRollup(r io.Reader) (SmapsRollup, error) {
	var m SmapsRollup
	fields := map[string]*uint64{"Rss:": &m.Rss, "Pss:": &m.Pss, "Pss_Anon:": &m.PssAnon, "Pss_Shmem:": &m.PssShmem, "Pss_File:": &m.PssFile}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		dst, ok := fields[f[0]]
		if !ok {
			continue
		}
		v, perr := strconv.ParseUint(f[1], 10, 64)
		if perr != nil {
			continue
		}
		*dst = v << 10
	}
	return m, sc.Err()
}

// ParseStatusThreads reads Threads from /proc/<pid>/status.
func ParseStatusThreads(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Threads:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, sc.Err()
}
