package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Event is an asynchronous QMP event such as SHUTDOWN or DEVICE_DELETED.
type Event struct {
	Name string
	// Data is the event's "data" member, left for the caller to decode
	// because its shape depends on Name.
	Data json.RawMessage
	// Timestamp is when QEMU emitted the event (zero if QEMU sent none).
	Timestamp time.Time
}

// Events returns a channel carrying every event. It holds the most recent
// events up to a fixed capacity and drops the oldest when full, so a slow
// or absent reader never stalls command replies; use Subscribe when an
// event must not be missed. The channel is closed when the connection ends.
func (c *Client) Events() <-chan Event { return c.events }

// Subscription receives the events that match a filter, in order, from
// the moment Subscribe returns. Unlike Events it never drops one: matched
// events queue until Wait takes them, so a subscription must be cancelled
// when no longer needed.
type Subscription struct {
	c     *Client
	name  string
	match func(Event) bool

	mu     sync.Mutex
	queue  []Event
	err    error         // set when the connection ends
	notify chan struct{} // capacity 1: "queue or err changed"
}

// Subscribe starts collecting events named name (any event if name is
// empty) for which match returns true (every such event if match is nil).
// match runs on the client's reader goroutine and must be quick and must
// not call back into the client.
//
// Subscribe before issuing the command whose event you wait for, e.g.
// before device_del when waiting for DEVICE_DELETED: an event that QEMU
// sends before the reply would otherwise be missed.
func (c *Client) Subscribe(name string, match func(Event) bool) *Subscription {
	s := &Subscription{c: c, name: name, match: match, notify: make(chan struct{}, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		s.err = c.err
		return s
	}
	c.subs[s] = struct{}{}
	return s
}

// Wait returns the next matching event. After the connection ends it still
// returns events that were queued before, then an error wrapping ErrClosed;
// this matters for SHUTDOWN, which QEMU sends just before it closes the
// socket.
func (s *Subscription) Wait(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			ev := s.queue[0]
			s.queue[0] = Event{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return ev, nil
		}
		err := s.err
		s.mu.Unlock()
		if err != nil {
			return Event{}, fmt.Errorf("qmp: waiting for event %s: %w", s.describe(), err)
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: waiting for event %s: %w", s.describe(), ctx.Err())
		}
	}
}

// Cancel stops collecting events and drops the queued ones. It is
// idempotent; a Wait in progress returns an error.
func (s *Subscription) Cancel() {
	s.c.mu.Lock()
	if s.c.subs != nil {
		delete(s.c.subs, s)
	}
	s.c.mu.Unlock()
	s.close(errCancelled)
	s.mu.Lock()
	s.queue = nil
	s.mu.Unlock()
}

var errCancelled = fmt.Errorf("subscription cancelled")

func (s *Subscription) describe() string {
	if s.name == "" {
		return "(any)"
	}
	return s.name
}

func (s *Subscription) deliver(ev Event) {
	s.mu.Lock()
	if s.err == nil {
		s.queue = append(s.queue, ev)
	}
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) close(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) wake() {
	select {
	case s.notify <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// WaitEvent waits for the next event named name that satisfies match (nil
// matches all). It only sees events that arrive after it is called; to
// wait for the consequence of a command, Subscribe before sending it.
func (c *Client) WaitEvent(ctx context.Context, name string, match func(Event) bool) (Event, error) {
	s := c.Subscribe(name, match)
	defer s.Cancel()
	return s.Wait(ctx)
}

// dispatchEvent runs on the reader goroutine.
func (c *Client) dispatchEvent(ev Event) {
	c.mu.Lock()
	var matched []*Subscription
	for s := range c.subs {
		if (s.name == "" || s.name == ev.Name) && (s.match == nil || s.match(ev)) {
			matched = append(matched, s)
		}
	}
	c.mu.Unlock()
	for _, s := range matched {
		s.deliver(ev)
	}

	// Drop-oldest: the reader is the only sender, so after discarding
	// one event there is room unless a consumer raced us for it, in
	// which case there is room anyway.
	for {
		select {
		case c.events <- ev:
			return
		default:
		}
		select {
		case <-c.events:
		default:
		}
	}
}
