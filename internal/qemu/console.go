package qemu

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/berth-runtime/berth/internal/logcap"
)

// consoleRelay copies the guest's serial console from QEMU's pipe into a
// size-capped log. The guest writes what it likes to its console; QEMU's
// own file chardev would let that grow without bound on the host's /run.
type consoleRelay struct {
	r, w *os.File
	log  *logcap.File
	done chan struct{}
}

// openConsole prepares the console pipe of m as ConsoleFD of cmd, or
// returns nil when the console is not capped. A nil relay's methods do
// nothing.
func openConsole(m Machine, cmd *exec.Cmd) (*consoleRelay, error) {
	if m.ConsoleLog == "" || m.ConsoleLogMaxBytes <= 0 {
		return nil, nil
	}
	if len(cmd.ExtraFiles) != ConsoleFD-3 {
		return nil, fmt.Errorf("console pipe must be QEMU's fd %d", ConsoleFD)
	}
	log, err := logcap.Create(m.ConsoleLog, m.ConsoleLogMaxBytes)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		log.Close()
		return nil, fmt.Errorf("console pipe: %w", err)
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, w)
	return &consoleRelay{r: r, w: w, log: log, done: make(chan struct{})}, nil
}

// started closes the parent's write end (QEMU holds its own) and starts
// copying; the copy ends when QEMU exits.
func (c *consoleRelay) started() {
	if c == nil {
		return
	}
	c.w.Close()
	go func() {
		defer close(c.done)
		io.Copy(c.log, c.r)
	}()
}

// abort releases everything when QEMU did not start.
func (c *consoleRelay) abort() {
	if c == nil {
		return
	}
	c.r.Close()
	c.w.Close()
	c.log.Close()
}

// wait lets the copy finish after QEMU has exited, then closes the log. A
// process that inherited the pipe (QEMU spawns none under -sandbox
// spawn=deny) could keep it open: after a second the read end is closed.
func (c *consoleRelay) wait() {
	if c == nil {
		return
	}
	select {
	case <-c.done:
	case <-time.After(time.Second):
		c.r.Close()
		<-c.done
	}
	c.r.Close()
	c.log.Close()
}
