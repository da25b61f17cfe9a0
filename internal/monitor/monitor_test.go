package monitor

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// fakeShim serves body on dir/metrics.sock as a shim would.
func fakeShim(t *testing.T, dir, body string) {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	l, err := net.Listen("unix", filepath.Join(dir, "metrics.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, body) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func family(id string, v int) string {
	return fmt.Sprintf("# HELP berth_container_memory_working_set_bytes ws\n# TYPE berth_container_memory_working_set_bytes gauge\nberth_container_memory_working_set_bytes{container_id=\"c\",sandbox_id=%q} %d\n", id, v)
}

func TestHandlerMergesSandboxes(t *testing.T) {
	run := t.TempDir()
	fakeShim(t, filepath.Join(run, "sandboxes", "a"), family("a", 1))
	fakeShim(t, filepath.Join(run, "sandboxes", "b"), family("b", 2))
	// A sandbox whose shim is gone leaves a socket nobody listens on.
	os.MkdirAll(filepath.Join(run, "sandboxes", "c"), 0o700)
	if l, err := net.Listen("unix", filepath.Join(run, "sandboxes", "c", "metrics.sock")); err == nil {
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}
	rec := httptest.NewRecorder()
	Handler(run, "metrics.sock").ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil).WithContext(context.Background()))
	body := rec.Body.String()
	for _, want := range []string{
		`berth_container_memory_working_set_bytes{container_id="c",sandbox_id="a"} 1`,
		`berth_container_memory_working_set_bytes{container_id="c",sandbox_id="b"} 2`,
		"berth_monitor_sandboxes 3",
		"berth_monitor_scrape_errors 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("merged output lacks %q:\n%s", want, body)
		}
	}
	if n := strings.Count(body, "# TYPE berth_container_memory_working_set_bytes"); n != 1 {
		t.Errorf("family declared %d times, want once:\n%s", n, body)
	}
}

// Scrapes in quick succession, even many at once, read the sandboxes once
// per CacheTTL, not once each.
func TestHandlerServesScrapesFromAShortCache(t *testing.T) {
	var gathers atomic.Int64
	gather := func(ctx context.Context, pattern string) []*dto.MetricFamily {
		gathers.Add(1)
		return []*dto.MetricFamily{gauge("berth_monitor_sandboxes", "n", 1)}
	}
	h := handler("unused", 200*time.Millisecond, gather)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			if !strings.Contains(rec.Body.String(), "berth_monitor_sandboxes 1") {
				t.Errorf("scrape body %q", rec.Body.String())
			}
		}()
	}
	wg.Wait()
	if n := gathers.Load(); n != 1 {
		t.Errorf("50 concurrent scrapes gathered %d times, want 1", n)
	}
	time.Sleep(250 * time.Millisecond)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/metrics", nil))
	if n := gathers.Load(); n != 2 {
		t.Errorf("a scrape after the TTL gathered %d times in all, want 2", n)
	}
}
