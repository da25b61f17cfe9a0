// Package qmp speaks the QEMU Machine Protocol: it reads the greeting,
// negotiates capabilities, matches replies to requests by "id", and hands
// out asynchronous events. It knows nothing about what any command or
// device means; that lives in package qemu.
//
// The protocol is described in QEMU's docs/interop/qmp-spec.rst. In short,
// the server sends one JSON object per message:
//
//	{"QMP": {"version": {...}, "capabilities": [...]}}      greeting
//	{"return": ..., "id": ...}                              success
//	{"error": {"class": ..., "desc": ...}, "id": ...}       failure
//	{"event": ..., "data": ..., "timestamp": {...}}         event
package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is wrapped by every error caused by the connection going away:
// Close was called, QEMU exited, or the stream broke.
var ErrClosed = errors.New("qmp: connection closed")

// Error is a QMP error reply. Class is QEMU's error class (almost always
// "GenericError" nowadays; "CommandNotFound" and "DeviceNotFound" still
// exist) and Desc is QEMU's human-readable message.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp error %s: %s", e.Class, e.Desc)
}

// Version is the QEMU version announced in the greeting.
type Version struct {
	Major, Minor, Micro int
	// Package is the distribution's package string, e.g.
	// "Debian 1:7.2+dfsg-7+deb12u18".
	Package string
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// Client is one QMP connection. All methods are safe for concurrent use.
type Client struct {
	conn    net.Conn
	dec     *json.Decoder
	version Version

	writeMu sync.Mutex // serialises whole messages on conn

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	subs    map[*Subscription]struct{}
	closed  bool  // set once the reader has stopped; no new pending/subs
	err     error // why the connection ended; wraps ErrClosed

	events     chan Event
	readerDone chan struct{}
	closeOnce  sync.Once
}

// reply is what Execute waits for: either a return value or a QMP error.
type reply struct {
	ret json.RawMessage
	err *Error
}

// message is the union of every message the server sends.
type message struct {
	QMP       *greeting       `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	ID json.RawMessage `json:"id"`
}

type greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// request is the wire form of a command. Field order is the order of the
// JSON keys, which the tests rely on.
type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        *uint64         `json:"id,omitempty"`
}

// eventBufferLen is the capacity of the Events channel. When it is full the
// oldest event is dropped: a consumer that does not read Events() (most
// callers only use Subscribe) must not make memory grow without bound or
// stall replies to commands.
const eventBufferLen = 128

// Dial connects to a QMP unix socket and negotiates capabilities. ctx
// bounds the connect and the handshake only, not the client's lifetime.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", socketPath, err)
	}
	return NewClient(ctx, conn)
}

// NewClient runs the QMP handshake on conn (read the greeting, send
// qmp_capabilities) and starts reading replies and events. The client owns
// conn from then on, and closes it if the handshake fails. ctx bounds the
// handshake only.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:       conn,
		dec:        json.NewDecoder(conn),
		nextID:     1,
		pending:    make(map[uint64]chan reply),
		subs:       make(map[*Subscription]struct{}),
		events:     make(chan Event, eventBufferLen),
		readerDone: make(chan struct{}),
	}
	early, err := c.handshake(ctx)
	if err != nil {
		conn.Close()
		return nil, err
	}
	go c.readLoop(early)
	return c, nil
}

// handshake reads the greeting and leaves capabilities-negotiation mode.
// QEMU sends no events before negotiation ends, but a peer that does is
// not an error: such events are returned and delivered once the reader
// runs, so they are not lost.
func (c *Client) handshake(ctx context.Context) ([]Event, error) {
	defer interruptOnCancel(ctx, c.conn.SetDeadline)()
	wrap := func(what string, err error) error {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("qmp: %s: %w", what, ctxErr)
		}
		return fmt.Errorf("qmp: %s: %w: %w", what, ErrClosed, err)
	}

	var g message
	if err := c.dec.Decode(&g); err != nil {
		return nil, wrap("reading greeting", err)
	}
	if g.QMP == nil {
		return nil, fmt.Errorf("qmp: expected greeting, got %s", summarize(g))
	}
	v := g.QMP.Version
	c.version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}

	if err := c.writeMessage(request{Execute: "qmp_capabilities"}, nil); err != nil {
		return nil, wrap("sending qmp_capabilities", err)
	}
	var early []Event
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			return nil, wrap("reading qmp_capabilities reply", err)
		}
		switch {
		case m.Event != "":
			early = append(early, m.event())
		case m.Error != nil:
			return nil, fmt.Errorf("qmp: qmp_capabilities: %w", m.Error)
		case m.Return != nil:
			return early, nil
		default:
			return nil, fmt.Errorf("qmp: unexpected reply to qmp_capabilities: %s", summarize(m))
		}
	}
}

// Version returns the QEMU version from the greeting.
func (c *Client) Version() Version { return c.version }

// Execute runs one command and waits for its reply. args is marshalled as
// the "arguments" object (nil sends none); the "return" value is
// unmarshalled into result (nil ignores it). A QMP error reply comes back
// as an error wrapping *Error.
//
// Cancelling ctx stops the wait, not the command: QEMU may still carry it
// out, and its late reply is discarded.
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
	return c.execute(ctx, command, args, result, nil)
}

// ExecuteWithFile is Execute that passes f to QEMU with the command
// (SCM_RIGHTS on the unix socket), as QMP's add-fd and getfd expect. QEMU
// holds its own copy; the caller may close f once this returns.
func (c *Client) ExecuteWithFile(ctx context.Context, command string, args any, result any, f *os.File) error {
	if _, ok := c.conn.(*net.UnixConn); !ok {
		return fmt.Errorf("qmp %s: passing a file needs a unix socket connection", command)
	}
	return c.execute(ctx, command, args, result, f)
}

func (c *Client) execute(ctx context.Context, command string, args any, result any, f *os.File) error {
	rawArgs, err := marshalArgs(args)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if err := ctx.Err(); err != nil {
		// Don't send a command nobody will wait for.
		return fmt.Errorf("qmp %s: %w", command, err)
	}

	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	id := c.nextID
	c.nextID++
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	if err := c.send(ctx, request{Execute: command, Arguments: rawArgs, ID: &id}, f); err != nil {
		forget()
		return fmt.Errorf("qmp %s: %w", command, err)
	}

	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", command, c.closeErr())
		}
		if r.err != nil {
			return fmt.Errorf("qmp %s: %w", command, r.err)
		}
		if result == nil {
			return nil
		}
		if err := json.Unmarshal(r.ret, result); err != nil {
			return fmt.Errorf("qmp %s: decoding return value %s: %w", command, truncate(r.ret), err)
		}
		return nil
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// marshalArgs turns args into the "arguments" member. QMP requires an
// object; anything else is a programming error caught here rather than by
// a confusing QEMU reply.
func marshalArgs(args any) (json.RawMessage, error) {
	if args == nil {
		return nil, nil
	}
	b, err := json.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("encoding arguments: %w", err)
	}
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil, nil
	}
	if len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("arguments must encode to a JSON object, got %s", truncate(b))
	}
	return b, nil
}

// send writes one request, honouring ctx while the write blocks.
func (c *Client) send(ctx context.Context, r request, f *os.File) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	restore := interruptOnCancel(ctx, c.conn.SetWriteDeadline)
	err := c.writeMessage(r, f)
	restore()
	if err == nil {
		return nil
	}
	var pw *partialWriteError
	if errors.As(err, &pw) {
		// Half a message on the wire leaves the stream unparseable for
		// QEMU; the connection is useless from here on.
		c.shutdown(fmt.Errorf("%w: %w", ErrClosed, err))
	}
	if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return ctxErr
	}
	if c.isClosed() {
		return c.closeErr()
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}

// interruptOnCancel makes blocking I/O on a connection fail once ctx ends,
// by moving a deadline into the past: net.Conn has no other way to honour
// a context. The returned function undoes it and must be called before the
// connection is used without ctx.
func interruptOnCancel(ctx context.Context, setDeadline func(time.Time) error) (restore func()) {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		setDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired
			setDeadline(time.Time{})
		}
	}
}

type partialWriteError struct{ err error }

func (e *partialWriteError) Error() string { return "partial write: " + e.err.Error() }
func (e *partialWriteError) Unwrap() error { return e.err }

// writeMessage encodes r as one line. Callers hold writeMu, except the
// handshake, which runs before anyone else can write.
func (c *Client) writeMessage(r request, f *os.File) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	var n int
	if f != nil {
		// The descriptor travels with the message's bytes; QEMU queues
		// it for the command that follows.
		n, _, err = c.conn.(*net.UnixConn).WriteMsgUnix(b, unix.UnixRights(int(f.Fd())), nil)
		runtime.KeepAlive(f)
		if err == nil && n < len(b) {
			var m int
			m, err = c.conn.Write(b[n:])
			n += m
		}
	} else {
		n, err = c.conn.Write(b)
	}
	if err != nil && n > 0 {
		return &partialWriteError{err}
	}
	return err
}

// readLoop owns the decoder after the handshake. It dispatches replies to
// waiting Execute calls and events to subscribers and the Events channel,
// and it tears the client down when the stream ends.
func (c *Client) readLoop(early []Event) {
	defer close(c.readerDone)
	defer close(c.events) // only the reader sends on it
	for _, ev := range early {
		c.dispatchEvent(ev)
	}
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			// After a syntax error json.Decoder cannot resynchronise,
			// so any read error ends the connection.
			c.shutdown(fmt.Errorf("%w: %w", ErrClosed, err))
			return
		}
		switch {
		case m.Event != "":
			c.dispatchEvent(m.event())
		case m.Return != nil || m.Error != nil:
			c.dispatchReply(m)
		default:
			// Unknown message kinds are ignored for forward
			// compatibility.
		}
	}
}

func (c *Client) dispatchReply(m message) {
	id, err := strconv.ParseUint(string(m.ID), 10, 64)
	if err != nil {
		// Every request carries a numeric id; a reply without one is
		// QEMU rejecting a message it could not parse, which cannot be
		// tied to a caller.
		return
	}
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ok {
		ch <- reply{ret: m.Return, err: m.Error} // buffered, never blocks
	}
}

func (m *message) event() Event {
	ev := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil && m.Timestamp.Seconds >= 0 {
		ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	return ev
}

// shutdown marks the client closed with cause, closes the connection and
// wakes everyone waiting. Only the first cause is kept.
func (c *Client) shutdown(cause error) {
	c.closeOnce.Do(func() {
		c.conn.Close()
		c.mu.Lock()
		c.closed = true
		c.err = cause
		pending := c.pending
		c.pending = nil
		subs := c.subs
		c.subs = nil
		c.mu.Unlock()
		for _, ch := range pending {
			close(ch)
		}
		for s := range subs {
			s.close(cause)
		}
	})
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *Client) closeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		return ErrClosed
	}
	return c.err
}

// Close closes the connection and waits for the reader to stop. Pending
// Execute calls and subscriptions fail with ErrClosed, and the Events
// channel is closed. Close is idempotent.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	<-c.readerDone
	return nil
}

// Done is closed when the connection has ended and every waiter has been
// released.
func (c *Client) Done() <-chan struct{} { return c.readerDone }

func summarize(m message) string {
	b, _ := json.Marshal(m)
	return truncate(b)
}

func truncate(b []byte) string {
	const max = 200
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
