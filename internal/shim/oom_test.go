package shim

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/runtime"
	"github.com/containerd/ttrpc"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// hostileOOMAgent answers WaitOOM at once: with the count the host asked
// after (no news) or with one more each time.
type hostileOOMAgent struct {
	api.AgentService // other methods are not called
	grow             bool
	calls            atomic.Int64
}

func (a *hostileOOMAgent) WaitOOM(_ context.Context, req *api.WaitOOMRequest) (*api.OOMResponse, error) {
	a.calls.Add(1)
	n := req.After
	if a.grow {
		n++
	}
	return &api.OOMResponse{OomKillCount: n}, nil
}

// agentOOMSource is the shim's view of the agent (what sandbox.WaitOOM
// does), over a real ttrpc connection.
type agentOOMSource struct{ c api.AgentService }

func (s agentOOMSource) WaitOOM(ctx context.Context, id string, after uint64) (uint64, error) {
	r, err := s.c.WaitOOM(ctx, &api.WaitOOMRequest{ContainerId: id, After: after})
	if err != nil {
		return 0, err
	}
	return r.OomKillCount, nil
}

func fakeAgent(t *testing.T, svc api.AgentService) oomSource {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterAgentService(srv, svc)
	host, guest := net.Pipe()
	l := &oneConnListener{c: guest, done: make(chan struct{})}
	go srv.Serve(context.Background(), l)
	cl := ttrpc.NewClient(host)
	t.Cleanup(func() { cl.Close(); srv.Close() })
	return agentOOMSource{api.NewAgentClient(cl)}
}

type oneConnListener struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}
func (l *oneConnListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}
func (l *oneConnListener) Addr() net.Addr { return &net.UnixAddr{Name: "fake-agent"} }

// runWatch runs watchOOM against agent for d and returns the TaskOOM
// events it would publish (reportOOM's dedup included).
func runWatch(t *testing.T, agent *hostileOOMAgent, p oomPace, d time.Duration) (events int) {
	src := fakeAgent(t, agent)
	c := &container{id: "c1"}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	watchOOM(ctx, src, c.id, p, c.oomKills, func(n uint64) {
		if c.updateOOMKills(n) {
			mu.Lock()
			events++
			mu.Unlock()
		}
	})
	return events
}

var testPace = oomPace{minEventInterval: 100 * time.Millisecond, backoff: 10 * time.Millisecond, maxBackoff: 80 * time.Millisecond}

func TestWatchOOMRateLimitsAGuestThatReportsKillsAtOnce(t *testing.T) {
	agent := &hostileOOMAgent{grow: true}
	events := runWatch(t, agent, testPace, time.Second)
	// One event per minEventInterval, the first at once: 11 in 1 s.
	if events < 5 || events > 11 {
		t.Errorf("%d TaskOOM events in 1 s at one per 100 ms, want 5..11", events)
	}
	if calls := agent.calls.Load(); calls > 2*11 {
		t.Errorf("%d WaitOOM calls in 1 s: the watcher spins", calls)
	}
}

func TestWatchOOMBacksOffFromAGuestAnsweringWithoutNews(t *testing.T) {
	agent := &hostileOOMAgent{grow: false}
	events := runWatch(t, agent, testPace, time.Second)
	if events != 0 {
		t.Errorf("%d TaskOOM events for answers without a new count, want 0", events)
	}
	// 10+20+40+80+80... ms: about 15 calls in 1 s.
	if calls := agent.calls.Load(); calls > 20 {
		t.Errorf("%d WaitOOM calls in 1 s from an agent answering at once: the watcher does not back off", calls)
	}
}

// TestInitOOMKillIsPublishedBeforeItsExit: an init that the guest kernel
// OOM-killed is reported with TaskOOM before TaskExit, as runc's shim
// does. The count comes with the guest's exit report; only when that
// lacks it does the shim ask for the container's statistics.
func TestInitOOMKillIsPublishedBeforeItsExit(t *testing.T) {
	one, zero := uint64(1), uint64(0)
	for _, tc := range []struct {
		name          string
		atExit        *uint64
		statsOOMKills uint64
		wantOOM       bool
		wantStats     bool
	}{
		{"kill counted in the exit report", &one, 0, true, false},
		{"no kill in the exit report", &zero, 7, false, false},
		{"exit report without a count", nil, 2, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, pod, ctx := newTestService(t)
			pod.statsOOMKills = tc.statsOOMKills
			toState(t, s, pod, ctx, "running")
			pod.proc(cid + "/").endWith(sandbox.ExitStatus{Code: 137, ExitedAt: time.Now(), OOMKills: tc.atExit})
			topics := s.publisher.(*recordingPublisher).topicsUntil(t, runtime.TaskExitEventTopic)
			oom, exit := slices.Index(topics, runtime.TaskOOMEventTopic), slices.Index(topics, runtime.TaskExitEventTopic)
			if tc.wantOOM && (oom < 0 || oom > exit) {
				t.Errorf("topics %v: want TaskOOM before TaskExit", topics)
			}
			if !tc.wantOOM && oom >= 0 {
				t.Errorf("topics %v: TaskOOM without a kill", topics)
			}
			if got := pod.called("stats " + cid); got != tc.wantStats {
				t.Errorf("ContainerStats called: %v, want %v", got, tc.wantStats)
			}
		})
	}
}
