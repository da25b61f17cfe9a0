package guest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// expectedCompiles is about how many files the kernel build compiles with
// the x86_64 fragment (counted on a build of linux-source-6.1 6.1.192):
// the percentage shown is an estimate from it, capped below 100 until make
// is done.
const expectedCompiles = 1590

// compileProgress consumes make's output: every line goes to the build
// log, and the count of files compiled (kbuild's "  CC      path" lines) is
// reported to the user. On a terminal one status line is rewritten in
// place a few times a second; anywhere else (a log file, CI) a plain line
// is written every reportEvery, so a multi-minute build never looks hung
// and never floods a log.
type compileProgress struct {
	mu       sync.Mutex
	out      io.Writer // the user's progress stream; nil: none
	log      io.Writer
	tty      bool
	start    time.Time
	partial  []byte
	compiled int
	last     string // the stage of the last counted line (CC, LD, ...)
	lastShow time.Time
	shown    bool
}

const (
	ttyRefresh  = 250 * time.Millisecond
	reportEvery = 15 * time.Second
)

func newCompileProgress(out, log io.Writer, start time.Time) *compileProgress {
	return &compileProgress{out: out, log: log, tty: isTerminal(out), start: start, lastShow: time.Now()}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (p *compileProgress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.log.Write(b); err != nil {
		return 0, err
	}
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		p.line(string(p.partial[:i]))
		p.partial = p.partial[i+1:]
	}
	return len(b), nil
}

// line counts one line of kbuild output: "  CC      kernel/fork.o".
func (p *compileProgress) line(l string) {
	f := strings.Fields(l)
	if len(f) < 2 || !strings.HasPrefix(l, "  ") {
		return
	}
	switch f[0] {
	case "CC", "AS":
		p.compiled++
	case "LD", "AR", "KSYMS", "OBJCOPY", "HOSTCC", "HOSTLD", "GEN", "SYSMAP", "MODPOST":
	default:
		return
	}
	p.last = f[0] + " " + f[len(f)-1]
	p.report()
}

func (p *compileProgress) status() string {
	pct := p.compiled * 100 / expectedCompiles
	if pct > 99 {
		pct = 99
	}
	return fmt.Sprintf("compiling kernel: %d files (~%d%%), %s elapsed", p.compiled, pct, time.Since(p.start).Round(time.Second))
}

func (p *compileProgress) report() {
	if p.out == nil {
		return
	}
	now := time.Now()
	if p.tty {
		if now.Sub(p.lastShow) < ttyRefresh {
			return
		}
		// \r and clear-to-end-of-line: one line, rewritten.
		s := p.status()
		if p.last != "" {
			s += "  " + p.last
		}
		if len(s) > 110 {
			s = s[:110]
		}
		fmt.Fprintf(p.out, "\r\x1b[K%s", s)
		p.shown = true
	} else {
		if now.Sub(p.lastShow) < reportEvery {
			return
		}
		fmt.Fprintln(p.out, p.status())
	}
	p.lastShow = now
}

// finish writes the last status line (and ends the terminal's line).
func (p *compileProgress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.partial) > 0 {
		p.line(string(p.partial))
		p.partial = nil
	}
	if p.out != nil {
		if p.tty && p.shown {
			fmt.Fprintf(p.out, "\r\x1b[K")
		}
		fmt.Fprintf(p.out, "compiled %d files in %s\n", p.compiled, time.Since(p.start).Round(time.Second))
	}
}
