// Command evilagent is berth-agent turned hostile, for the end-to-end
// tests of a fully compromised guest (test/e2e/hostile_flood_test.go). It
// is never part of a real guest image: the test builds it (make
// bin/berth-evil-agent) and puts it as /init into an initramfs of its own.
//
// It runs the real agent (internal/agent, through agent.ServeHooked), so the
// sandbox boots and containers run, and once told to, attacks the host
// through the agent's own channel:
//
//   - streams: opens yamux streams toward the host on the virtio-serial
//     session the real agent serves, from many goroutines at once, writes
//     to each until the host resets it, never closes one, and opens the
//     next. The host's GoAway is hidden from the guest's yamux, which
//     would otherwise refuse to open streams, as a compromised agent
//     would ignore it;
//   - pings: sends yamux ping requests from many goroutines;
//   - oom: answers every WaitOOM at once with a forged, ever greater OOM
//     kill count;
//   - console: writes that many bytes to the serial console.
//
// The attack starts when the file TriggerFile appears in the guest (the
// test writes it as root in the guest, with berth debug exec): its content
// is "key=value" words, for example "streams=400 pings=2000 oom=1
// console=1048576". Counters of what it did are rewritten to StatsFile
// twice a second, for the test to read the same way.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/opencontainers/runc/libcontainer"
	// As in cmd/berth-agent: nsenter for runc's init, the devices
	// controller for device cgroup rules.
	_ "github.com/opencontainers/cgroups/devices"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/agent"
	"github.com/berth-runtime/berth/internal/agent/pid1"
	"github.com/berth-runtime/berth/internal/transport"
)

// Guest paths of the trigger and the counters (the guest's /run is a
// tmpfs of its own).
const (
	TriggerFile = "/run/evil-attack"
	StatsFile   = "/run/evil-stats"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		return
	}
	if pid1.IsService() {
		agent.RunService(func(ctx context.Context) error {
			e := &evil{start: make(chan struct{})}
			go e.waitTrigger()
			go e.writeStats()
			return agent.ServeHooked(ctx, agent.Hooks{
				Service: func(s api.AgentService) api.AgentService { return &evilService{AgentService: s, e: e} },
				Mux:     transport.MuxHooks{Conn: ignoreGoAway, Session: e.session},
			})
		})
	}
	fmt.Fprintln(os.Stderr, "evilagent runs inside a Berth test guest as PID 1")
	os.Exit(2)
}

type evil struct {
	start chan struct{} // closed when the trigger file appears
	args  map[string]int

	streamsOpened, streamsFailed, streamErrors atomic.Int64
	bytesWritten                               atomic.Int64
	pingsSent                                  atomic.Int64
	oomAnswers                                 atomic.Int64
	consoleBytes                               atomic.Int64
}

// waitTrigger polls for the trigger file, parses it and starts the
// attacks that do not need a session.
func (e *evil) waitTrigger() {
	for {
		b, err := os.ReadFile(TriggerFile)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			e.args = map[string]int{}
			for _, f := range strings.Fields(string(b)) {
				k, v, _ := strings.Cut(f, "=")
				n, _ := strconv.Atoi(v)
				e.args[k] = n
			}
			close(e.start)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := e.args["console"]; n > 0 {
		go e.floodConsole(n)
	}
}

func (e *evil) writeStats() {
	for {
		s := fmt.Sprintf("streams_opened=%d streams_open_failed=%d stream_write_errors=%d bytes_written=%d pings_sent=%d oom_answers=%d console_bytes=%d\n",
			e.streamsOpened.Load(), e.streamsFailed.Load(), e.streamErrors.Load(), e.bytesWritten.Load(),
			e.pingsSent.Load(), e.oomAnswers.Load(), e.consoleBytes.Load())
		os.WriteFile(StatsFile+".tmp", []byte(s), 0o644)
		os.Rename(StatsFile+".tmp", StatsFile)
		time.Sleep(500 * time.Millisecond)
	}
}

// session attacks the host through one yamux session of the real agent.
func (e *evil) session(s *yamux.Session) {
	select {
	case <-e.start:
	case <-s.CloseChan():
		return
	}
	var wg sync.WaitGroup
	for i := 0; i < e.args["streams"]; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); e.holdStreams(s) }()
	}
	for i := 0; i < e.args["pings"]; i++ {
		go func() {
			e.pingsSent.Add(1)
			s.Ping() // the host never answers: waits out yamux's write timeout
		}()
	}
	wg.Wait()
}

// holdStreams opens a stream, writes to it until that fails, never closes
// it, and opens the next, until the session ends.
func (e *evil) holdStreams(s *yamux.Session) {
	buf := make([]byte, 64<<10)
	for !s.IsClosed() {
		st, err := s.OpenStream()
		if err != nil {
			e.streamsFailed.Add(1)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		e.streamsOpened.Add(1)
		// A host that held the stream without reading would block the
		// write forever once the window is full; the deadline lets
		// this goroutine move on to the next stream, leaving this one
		// open and full.
		st.SetWriteDeadline(time.Now().Add(5 * time.Second))
		for {
			n, err := st.Write(buf)
			e.bytesWritten.Add(int64(n))
			if err != nil {
				e.streamErrors.Add(1)
				break
			}
		}
	}
}

// floodConsole writes n bytes of lines to the serial console (the agent's
// stderr is /dev/console).
func (e *evil) floodConsole(n int) {
	line := []byte("evilagent console flood " + strings.Repeat("x", 100) + "\n")
	for written := 0; written < n; written += len(line) {
		os.Stderr.Write(line)
		e.consoleBytes.Add(int64(len(line)))
	}
}

// evilService is the real agent service, but for WaitOOM.
type evilService struct {
	api.AgentService
	e *evil
}

// WaitOOM blocks until the attack starts, then answers every call at once
// with one OOM kill more than the host asked after: a host that re-asks
// at once would spin, and one that publishes every answer would flood
// TaskOOM events.
func (s *evilService) WaitOOM(ctx context.Context, req *api.WaitOOMRequest) (*api.OOMResponse, error) {
	select {
	case <-s.e.start:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if s.e.args["oom"] == 0 {
		return s.AgentService.WaitOOM(ctx, req)
	}
	s.e.oomAnswers.Add(1)
	return &api.OOMResponse{OomKillCount: req.After + 1}, nil
}

// ignoreGoAway hides the host's yamux GoAway frames from the guest's
// session, so that it keeps opening streams toward the host.
func ignoreGoAway(rw io.ReadWriteCloser) io.ReadWriteCloser {
	return struct {
		io.Reader
		io.WriteCloser
	}{transport.FrameFilter(rw, func(typ uint8, _ uint16) bool { return typ == transport.YamuxTypeGoAway }), rw}
}
