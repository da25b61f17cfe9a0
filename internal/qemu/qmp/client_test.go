package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// The fake peer below replays a script in the spirit of Kata's
// qmpTestCommandBuffer: it sends canned lines and checks that the client
// sends exactly the expected JSON, byte for byte.

const testGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// step is one line of the script: the peer either sends send, or reads one
// line and requires it to equal expect.
type step struct {
	send   string
	expect string
}

func send(s string) step   { return step{send: s} }
func expect(s string) step { return step{expect: s} }

// handshake is the script every client starts with.
var handshake = []step{
	send(testGreeting),
	expect(`{"execute":"qmp_capabilities"}`),
	send(`{"return": {}}`),
}

type peer struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	done chan struct{}
}

// startPeer runs script on the server end of a pipe and returns the client
// end. The script runs in order; the peer then stays open until the test
// ends, unless the script's last step closes it (see closeConn).
func startPeer(t *testing.T, script ...step) (net.Conn, *peer) {
	t.Helper()
	clientEnd, serverEnd := net.Pipe()
	p := &peer{t: t, conn: serverEnd, r: bufio.NewReader(serverEnd), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.run(script)
	}()
	t.Cleanup(func() {
		serverEnd.Close()
		<-p.done
	})
	return clientEnd, p
}

const closeConn = "\x00close"

func (p *peer) run(script []step) {
	for i, s := range script {
		switch {
		case s.send == closeConn:
			p.conn.Close()
			return
		case s.send != "":
			if _, err := p.conn.Write([]byte(s.send + "\n")); err != nil {
				p.t.Errorf("step %d: peer write %q: %v", i, s.send, err)
				return
			}
		default:
			line, err := p.readLine()
			if err != nil {
				p.t.Errorf("step %d: peer expected %s, read error: %v", i, s.expect, err)
				return
			}
			if line != s.expect {
				p.t.Errorf("step %d: client sent\n  %s\nwant\n  %s", i, line, s.expect)
				return
			}
		}
	}
}

func (p *peer) readLine() (string, error) {
	line, err := p.r.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

func script(steps ...[]step) []step {
	var all []step
	for _, s := range steps {
		all = append(all, s...)
	}
	return all
}

func newTestClient(t *testing.T, steps ...step) (*Client, *peer) {
	t.Helper()
	conn, p := startPeer(t, script(handshake, steps)...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewClient(ctx, conn)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, p
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshakeAndVersion(t *testing.T) {
	c, _ := newTestClient(t)
	got := c.Version()
	want := Version{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7+deb12u18+b3"}
	if got != want {
		t.Errorf("Version() = %+v, want %+v", got, want)
	}
}

func TestExecute(t *testing.T) {
	type status struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	tests := []struct {
		name    string
		command string
		args    any
		wire    string
		reply   string
		result  any
		want    any
	}{
		{
			name:    "no arguments, result decoded",
			command: "query-status",
			wire:    `{"execute":"query-status","id":1}`,
			reply:   `{"return": {"status": "running", "singlestep": false, "running": true}, "id": 1}`,
			result:  &status{},
			want:    &status{Status: "running", Running: true},
		},
		{
			name:    "struct arguments, result ignored",
			command: "device_del",
			args: struct {
				ID string `json:"id"`
			}{"dimm0"},
			wire:  `{"execute":"device_del","arguments":{"id":"dimm0"},"id":1}`,
			reply: `{"return": {}, "id": 1}`,
		},
		{
			name:    "map arguments",
			command: "qom-set",
			args:    map[string]any{"path": "/machine/peripheral/vmem0", "property": "requested-size", "value": 1 << 30},
			wire:    `{"execute":"qom-set","arguments":{"path":"/machine/peripheral/vmem0","property":"requested-size","value":1073741824},"id":1}`,
			reply:   `{"return": {}, "id": 1}`,
		},
		{
			name:    "typed nil pointer sends no arguments",
			command: "stop",
			args:    (*struct{})(nil),
			wire:    `{"execute":"stop","id":1}`,
			reply:   `{"return": {}, "id": 1}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newTestClient(t, expect(tt.wire), send(tt.reply))
			if err := c.Execute(testCtx(t), tt.command, tt.args, tt.result); err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if tt.want != nil {
				got, _ := json.Marshal(tt.result)
				want, _ := json.Marshal(tt.want)
				if string(got) != string(want) {
					t.Errorf("result = %s, want %s", got, want)
				}
			}
		})
	}
}

func TestExecuteQMPError(t *testing.T) {
	c, _ := newTestClient(t,
		expect(`{"execute":"device_del","arguments":{"id":"nope"},"id":1}`),
		send(`{"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": 1}`),
	)
	err := c.Execute(testCtx(t), "device_del", map[string]string{"id": "nope"}, nil)
	var qerr *Error
	if !errors.As(err, &qerr) {
		t.Fatalf("Execute error = %v, want *Error", err)
	}
	if qerr.Class != "DeviceNotFound" || qerr.Desc != "Device 'nope' not found" {
		t.Errorf("got %+v", qerr)
	}
	if !strings.Contains(err.Error(), "device_del") {
		t.Errorf("error %q does not name the command", err)
	}
}

func TestExecuteRejectsNonObjectArguments(t *testing.T) {
	c, _ := newTestClient(t) // the peer expects nothing more
	err := c.Execute(testCtx(t), "device_del", []string{"x"}, nil)
	if err == nil || !strings.Contains(err.Error(), "JSON object") {
		t.Fatalf("Execute error = %v, want complaint about a JSON object", err)
	}
}

func TestExecuteBadResult(t *testing.T) {
	c, _ := newTestClient(t,
		expect(`{"execute":"query-status","id":1}`),
		send(`{"return": [1, 2], "id": 1}`),
	)
	var out struct{ Status string }
	err := c.Execute(testCtx(t), "query-status", nil, &out)
	if err == nil || !strings.Contains(err.Error(), "decoding return value") {
		t.Fatalf("Execute error = %v", err)
	}
}

// TestConcurrentExecute answers two in-flight commands in reverse order;
// each caller must get its own reply.
func TestConcurrentExecute(t *testing.T) {
	conn, p := startPeer(t, handshake...)
	c, err := NewClient(testCtx(t), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-p.done // handshake finished; drive the rest by hand

	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out struct{ Echo string }
			errs[i] = c.Execute(testCtx(t), "echo", map[string]string{"echo": fmt.Sprint(i)}, &out)
			results[i] = out.Echo
		}()
	}

	type req struct {
		Execute   string
		Arguments struct{ Echo string }
		ID        uint64
	}
	var reqs []req
	for i := 0; i < n; i++ {
		line, err := p.readLine()
		if err != nil {
			t.Fatal(err)
		}
		var r req
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, r)
	}
	// An event in the middle must not confuse reply matching.
	fmt.Fprintf(p.conn, `{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}`+"\n")
	for i := len(reqs) - 1; i >= 0; i-- {
		fmt.Fprintf(p.conn, `{"return": {"echo": %q}, "id": %d}`+"\n", reqs[i].Arguments.Echo, reqs[i].ID)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil || results[i] != fmt.Sprint(i) {
			t.Errorf("caller %d: result %q, err %v", i, results[i], errs[i])
		}
	}
}

// TestSubscribeBeforeCommand is the reason Subscribe exists: QEMU may send
// the event before the command's reply.
func TestSubscribeBeforeCommand(t *testing.T) {
	c, _ := newTestClient(t,
		expect(`{"execute":"device_del","arguments":{"id":"dimm0"},"id":1}`),
		send(`{"event": "DEVICE_DELETED", "data": {"device": "other", "path": "/machine/peripheral/other"}, "timestamp": {"seconds": 1700000000, "microseconds": 5}}`),
		send(`{"event": "DEVICE_DELETED", "data": {"device": "dimm0", "path": "/machine/peripheral/dimm0"}, "timestamp": {"seconds": 1700000001, "microseconds": 250000}}`),
		send(`{"return": {}, "id": 1}`),
	)
	ctx := testCtx(t)
	sub := c.Subscribe("DEVICE_DELETED", func(ev Event) bool {
		var d struct{ Device string }
		return json.Unmarshal(ev.Data, &d) == nil && d.Device == "dimm0"
	})
	defer sub.Cancel()
	if err := c.Execute(ctx, "device_del", map[string]string{"id": "dimm0"}, nil); err != nil {
		t.Fatal(err)
	}
	ev, err := sub.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Unix(1700000001, 250000000); !ev.Timestamp.Equal(want) {
		t.Errorf("timestamp %v, want %v", ev.Timestamp, want)
	}
	if !strings.Contains(string(ev.Data), `"dimm0"`) {
		t.Errorf("wrong event data %s", ev.Data)
	}
	// Only one event matched.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if ev, err := sub.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Wait = %+v, %v; want deadline exceeded", ev, err)
	}
}

func TestWaitEvent(t *testing.T) {
	conn, p := startPeer(t, handshake...)
	c, err := NewClient(testCtx(t), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-p.done

	got := make(chan Event, 1)
	go func() {
		ev, err := c.WaitEvent(testCtx(t), "STOP", nil)
		if err != nil {
			t.Error(err)
		}
		got <- ev
	}()
	// Keep sending until the waiter has subscribed and caught one.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case ev := <-got:
			if ev.Name != "STOP" {
				t.Errorf("got %q", ev.Name)
			}
			return
		case <-tick.C:
			fmt.Fprintln(p.conn, `{"event": "RESUME"}`)
			fmt.Fprintln(p.conn, `{"event": "STOP"}`)
		}
	}
}

func TestEventsDropOldest(t *testing.T) {
	const total = eventBufferLen + 72
	var steps []step
	for i := 0; i < total; i++ {
		steps = append(steps, send(fmt.Sprintf(`{"event": "E%d"}`, i)))
	}
	// The reply orders after every event, so once Execute returns the
	// reader has dispatched them all.
	steps = append(steps, expect(`{"execute":"query-status","id":1}`), send(`{"return": {}, "id": 1}`))
	c, _ := newTestClient(t, steps...)
	if err := c.Execute(testCtx(t), "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
	var names []string
	for len(names) < eventBufferLen {
		names = append(names, (<-c.Events()).Name)
	}
	if names[0] != fmt.Sprintf("E%d", total-eventBufferLen) || names[len(names)-1] != fmt.Sprintf("E%d", total-1) {
		t.Errorf("kept events %s..%s, want the newest %d", names[0], names[len(names)-1], eventBufferLen)
	}
}

// TestConnectionLoss: QEMU sends SHUTDOWN and closes the socket while a
// command is in flight.
func TestConnectionLoss(t *testing.T) {
	c, p := newTestClient(t,
		expect(`{"execute":"quit","id":1}`),
		send(`{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`),
		send(closeConn),
	)
	ctx := testCtx(t)
	sub := c.Subscribe("SHUTDOWN", nil)
	err := c.Execute(ctx, "quit", nil, nil)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Execute error = %v, want ErrClosed", err)
	}
	<-p.done
	ev, err := sub.Wait(ctx)
	if err != nil || ev.Name != "SHUTDOWN" {
		t.Fatalf("queued event lost: %+v, %v", ev, err)
	}
	if _, err := sub.Wait(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Wait after close = %v, want ErrClosed", err)
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after close = %v, want ErrClosed", err)
	}
	if _, err := c.Subscribe("STOP", nil).Wait(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after close: Wait = %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed")
	}
	for range c.Events() { // must terminate: the channel is closed
	}
}

func TestExecuteContextCancelled(t *testing.T) {
	c, _ := newTestClient(t,
		expect(`{"execute":"slow","id":1}`),
		// no reply to 1 yet
		expect(`{"execute":"query-status","id":2}`),
		send(`{"return": {"late": true}, "id": 1}`), // discarded
		send(`{"return": {"status": "running"}, "id": 2}`),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Execute(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute = %v, want deadline exceeded", err)
	}
	var out struct{ Status string }
	if err := c.Execute(testCtx(t), "query-status", nil, &out); err != nil || out.Status != "running" {
		t.Fatalf("next Execute: %+v, %v", out, err)
	}
}

// TestExecuteWriteBlocked: the peer stops reading, so the write itself
// blocks; ctx must still win, and the connection stays usable because no
// byte was written.
func TestExecuteWriteBlocked(t *testing.T) {
	conn, p := startPeer(t, handshake...)
	c, err := NewClient(testCtx(t), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-p.done
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Execute(ctx, "stop", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute = %v, want deadline exceeded", err)
	}
	go func() {
		line, _ := p.readLine()
		if line != `{"execute":"cont","id":2}` {
			t.Errorf("peer read %q", line)
		}
		fmt.Fprintln(p.conn, `{"return": {}, "id": 2}`)
	}()
	if err := c.Execute(testCtx(t), "cont", nil, nil); err != nil {
		t.Fatalf("Execute after blocked write: %v", err)
	}
}

func TestHandshakeFailures(t *testing.T) {
	tests := []struct {
		name   string
		script []step
		want   string
	}{
		{"not a greeting", []step{send(`{"return": {}}`)}, "expected greeting"},
		{"capabilities refused", []step{
			send(testGreeting),
			expect(`{"execute":"qmp_capabilities"}`),
			send(`{"error": {"class": "GenericError", "desc": "nope"}}`),
		}, "nope"},
		{"closed before greeting", []step{send(closeConn)}, "connection closed"},
		{"garbage", []step{send(`QMP?`)}, "reading greeting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, _ := startPeer(t, tt.script...)
			_, err := NewClient(testCtx(t), conn)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewClient error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestHandshakeContext(t *testing.T) {
	conn, _ := startPeer(t) // silent peer
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := NewClient(ctx, conn)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NewClient = %v, want deadline exceeded", err)
	}
}

func TestEarlyEventsKept(t *testing.T) {
	conn, _ := startPeer(t,
		send(testGreeting),
		expect(`{"execute":"qmp_capabilities"}`),
		send(`{"event": "EARLY"}`),
		send(`{"return": {}}`),
	)
	c, err := NewClient(testCtx(t), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ev := <-c.Events(); ev.Name != "EARLY" {
		t.Errorf("got %q", ev.Name)
	}
}

func TestCloseIdempotent(t *testing.T) {
	c, _ := newTestClient(t)
	sub := c.Subscribe("", nil)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Wait(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Wait = %v, want ErrClosed", err)
	}
	sub.Cancel()
	sub.Cancel()
}
