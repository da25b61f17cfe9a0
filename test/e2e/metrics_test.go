package e2e

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berth-runtime/berth/internal/sandbox"
)

// metricFamilies are the families docs/metrics.md documents.
var metricFamilies = []string{
	"berth_sandbox_up",
	"berth_guest_memory_bytes",
	"berth_sandbox_cgroup_memory_limit_bytes",
	"berth_container_memory_working_set_bytes",
	"berth_container_memory_usage_bytes",
	"berth_container_memory_cache_bytes",
	"berth_container_cpu_seconds_total",
	"berth_container_pids",
	"berth_hypervisor_rss_bytes",
	"berth_hypervisor_pss_bytes",
	"berth_hypervisor_threads",
	"berth_hypervisor_fds",
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "30"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func assertFamilies(t *testing.T, where, body, sandboxID string) {
	t.Helper()
	for _, f := range metricFamilies {
		if !strings.Contains(body, "# TYPE "+f+" ") {
			t.Errorf("%s: family %s missing", where, f)
		}
	}
	for _, want := range []string{
		`berth_sandbox_up{sandbox_id="` + sandboxID + `"} 1`,
		`process="qemu-system-x86"`,
		`process="virtiofsd"`,
		`berth_guest_memory_bytes{sandbox_id="` + sandboxID + `",state="boot"} 2.68435456e+08`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("%s: no %s", where, want)
		}
	}
}

// TestMetricsEndpoint scrapes a running sandbox with curl, on the shim's
// unix socket and through `berth monitor` on TCP.
func TestMetricsEndpoint(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "metrics-scrape"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sh", "-c", "x=$(head -c 20m /dev/zero | tr '\\0' x); sleep 1000")
	defer cleanupTask(t, id)

	sock := sandbox.Dir(env.runDir, id) + "/" + sandbox.MetricsSocketName
	body := curl(t, "--unix-socket", sock, "http://sandbox/metrics")
	assertFamilies(t, "shim socket", body, id)
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "berth_hypervisor_rss_bytes") || strings.HasPrefix(l, "berth_container_memory_working_set_bytes") || strings.HasPrefix(l, "berth_hypervisor_pss_bytes") {
			t.Log(l)
		}
	}

	// berth monitor on a free port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	mon := berthCmd("monitor", "--listen", addr)
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { mon.Process.Kill(); mon.Wait() }()
	eventually(t, 10*time.Second, "berth monitor listens on "+addr, func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
	body = curl(t, "http://"+addr+"/metrics")
	assertFamilies(t, "berth monitor", body, id)
	if !strings.Contains(body, "berth_monitor_sandboxes 1") || !strings.Contains(body, "berth_monitor_scrape_errors 0") {
		t.Errorf("berth monitor: want one sandbox read without errors:\n%s", grepLines(body, "berth_monitor"))
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
