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
	"testing"
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
