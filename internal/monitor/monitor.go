// Package monitor is `berth monitor`: one HTTP endpoint, on TCP, that
// Prometheus scrapes for every sandbox on the host (as kata-monitor does).
// Each shim serves its own sandbox's metrics on a unix socket in the
// sandbox directory, which Prometheus cannot reach; the monitor finds
// those sockets under run_dir on every scrape, reads them concurrently
// and merges the families (every series already carries sandbox_id).
package monitor

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// scrapeTimeout bounds the read of one sandbox's socket.
const scrapeTimeout = 15 * time.Second

// CacheTTL is how long one gathering of every sandbox serves scrapes.
// Each sandbox read costs calls into its guest; the endpoint must not let
// whoever can reach it turn a scrape loop into a guest-call loop.
const CacheTTL = time.Second

// Handler serves the merged metrics of the sandboxes under runDir;
// socketName is the metrics socket's name in a sandbox directory. Scrapes
// within CacheTTL of a gathering get its result; concurrent scrapes wait
// for one gathering.
func Handler(runDir, socketName string) http.Handler {
	return handler(filepath.Join(runDir, "sandboxes", "*", socketName), CacheTTL, Gather)
}

func handler(pattern string, ttl time.Duration, gather func(context.Context, string) []*dto.MetricFamily) http.Handler {
	var (
		mu   sync.Mutex
		at   time.Time
		last []*dto.MetricFamily
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if last == nil || time.Since(at) >= ttl {
			// Not the request's context: the result serves others too.
			ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
			last, at = gather(ctx, pattern), time.Now()
			cancel()
		}
		fams := last
		mu.Unlock()
		w.Header().Set("Content-Type", string(expfmt.FmtText))
		enc := expfmt.NewEncoder(w, expfmt.FmtText)
		for _, f := range fams {
			if err := enc.Encode(f); err != nil {
				return
			}
		}
	})
}

// Gather reads every socket matching pattern and merges the families,
// sorted by name. A sandbox that cannot be read (ending, or its shim
// gone) is counted in berth_monitor_scrape_errors and otherwise skipped.
func Gather(ctx context.Context, pattern string) []*dto.MetricFamily {
	socks, _ := filepath.Glob(pattern)
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		merged = map[string]*dto.MetricFamily{}
		failed int
	)
	for _, sock := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fams, err := scrape(ctx, sock)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			for name, f := range fams {
				if m, ok := merged[name]; ok {
					m.Metric = append(m.Metric, f.Metric...)
				} else {
					merged[name] = f
				}
			}
		}()
	}
	wg.Wait()
	merged["berth_monitor_sandboxes"] = gauge("berth_monitor_sandboxes", "Sandbox metrics sockets found under run_dir.", float64(len(socks)))
	merged["berth_monitor_scrape_errors"] = gauge("berth_monitor_scrape_errors", "Sandbox metrics sockets that could not be read in this scrape.", float64(failed))
	out := make([]*dto.MetricFamily, 0, len(merged))
	for _, f := range merged {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

func gauge(name, help string, v float64) *dto.MetricFamily {
	t := dto.MetricType_GAUGE
	return &dto.MetricFamily{Name: &name, Help: &help, Type: &t, Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: &v}}}}
}

// scrape reads one shim's metrics over its unix socket.
func scrape(ctx context.Context, sock string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://sandbox/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", sock, resp.Status)
	}
	var p expfmt.TextParser
	return p.TextToMetricFamilies(resp.Body)
}
