package stats

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

const smapsRollup = `55d4c1a2e000-7ffd2b5fe000 ---p 00000000 00:00 0                          [rollup]
Rss:              412340 kB
Pss:              301122 kB
Pss_Anon:          40000 kB
Shared_Clean:       9000 kB
Private_Dirty:    380000 kB
`

func TestParseProc(t *testing.T) {
	m, err := ParseSmapsRollup(strings.NewReader(smapsRollup))
	if err != nil || m != (SmapsRollup{Rss: 412340 << 10, Pss: 301122 << 10, PssAnon: 40000 << 10}) {
		t.Errorf("ParseSmapsRollup = %+v, %v", m, err)
	}
	n, err := ParseStatusThreads(strings.NewReader("Name:\tqemu-system-x86\nState:\tS (sleeping)\nThreads:\t4\nSigQ:\t0/94\n"))
	if err != nil || n != 4 {
		t.Errorf("ParseStatusThreads = %d, %v", n, err)
	}
}

type fakeSource struct {
	s   Sample
	err error
}

func (f fakeSource) Sample(context.Context) (Sample, error) { return f.s, f.err }

func TestCollector(t *testing.T) {
	src := fakeSource{s: Sample{
		GuestBootBytes: 256 << 20, GuestCurrentBytes: 512 << 20, GuestRequestedBytes: 512 << 20,
		CgroupMemoryLimitBytes: 768 << 20,
		Elastic:                &ElasticSample{Grows: 3, Shrinks: 1, Refusals: 2, GrownBytes: 768 << 20, ShrunkBytes: 512 << 20, FloorBytes: 256 << 20, CeilingBytes: 16 << 30},
		Containers: []ContainerSample{{ID: "c1", Stats: &api.StatsResponse{CgroupVersion: 2, MemoryUsageBytes: 216 << 20,
			MemoryStat: map[string]uint64{"inactive_file": 190 << 20, "file": 200 << 20}, CpuUsageUsec: 3000000, CpuUserUsec: 2000000, CpuSystemUsec: 1000000, PidsCurrent: 2}}},
		Processes:  []ProcessSample{{Name: "qemu-system-x86", Pid: 42, RSSBytes: 400 << 20, PSSBytes: 300 << 20, Threads: 4, FDs: 30}},
		Interfaces: []InterfaceSample{{Name: "eth0", RxBytes: 1000, RxPackets: 10, TxBytes: 2000, TxPackets: 20, TxDropped: 3}},
	}}
	fams := gather(t, NewCollector(context.Background(), "sb1", src))
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"berth_sandbox_up", nil, 1},
		{"berth_guest_memory_bytes", map[string]string{"state": "boot"}, 256 << 20},
		{"berth_guest_memory_bytes", map[string]string{"state": "current"}, 512 << 20},
		{"berth_sandbox_cgroup_memory_limit_bytes", nil, 768 << 20},
		{"berth_memory_elastic_changes_total", map[string]string{"direction": "grow"}, 3},
		{"berth_memory_elastic_changes_total", map[string]string{"direction": "shrink"}, 1},
		{"berth_memory_elastic_moved_bytes_total", map[string]string{"direction": "grow"}, 768 << 20},
		{"berth_memory_elastic_moved_bytes_total", map[string]string{"direction": "shrink"}, 512 << 20},
		{"berth_memory_elastic_refusals_total", nil, 2},
		{"berth_memory_elastic_bound_bytes", map[string]string{"bound": "ceiling"}, 16 << 30},
		{"berth_container_memory_working_set_bytes", map[string]string{"container_id": "c1"}, 26 << 20},
		{"berth_container_memory_usage_bytes", map[string]string{"container_id": "c1"}, 216 << 20},
		{"berth_container_memory_cache_bytes", map[string]string{"container_id": "c1"}, 200 << 20},
		{"berth_container_cpu_seconds_total", map[string]string{"container_id": "c1", "mode": "user"}, 2},
		{"berth_container_cpu_seconds_total", map[string]string{"container_id": "c1", "mode": "system"}, 1},
		{"berth_hypervisor_rss_bytes", map[string]string{"process": "qemu-system-x86", "pid": "42"}, 400 << 20},
		{"berth_hypervisor_pss_bytes", map[string]string{"process": "qemu-system-x86", "pid": "42"}, 300 << 20},
		{"berth_hypervisor_threads", map[string]string{"pid": "42"}, 4},
		{"berth_hypervisor_fds", map[string]string{"pid": "42"}, 30},
		{"berth_pod_network_bytes_total", map[string]string{"interface": "eth0", "direction": "receive"}, 1000},
		{"berth_pod_network_bytes_total", map[string]string{"interface": "eth0", "direction": "transmit"}, 2000},
		{"berth_pod_network_packets_total", map[string]string{"interface": "eth0", "direction": "transmit"}, 20},
		{"berth_pod_network_dropped_total", map[string]string{"interface": "eth0", "direction": "transmit"}, 3},
	} {
		got, ok := value(fams, tc.name, tc.labels)
		if !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	down := gather(t, NewCollector(context.Background(), "sb2", fakeSource{err: errors.New("VM gone")}))
	if v, ok := value(down, "berth_sandbox_up", nil); !ok || v != 0 || len(down) != 1 {
		t.Errorf("a failed sample: up = %v (%v), %d families", v, ok, len(down))
	}
}

func gather(t *testing.T, c prometheus.Collector) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value finds the series of family name whose labels include want, and
// checks that every series carries sandbox_id.
func value(fams []*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["sandbox_id"] == "" {
				return 0, false
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			if m.Gauge != nil {
				return m.Gauge.GetValue(), true
			}
			return m.Counter.GetValue(), true
		}
	}
	return 0, false
}
