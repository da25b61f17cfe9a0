package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
)

// ttyRun is a `berth run --tty` whose stdin and stdout are the slave of a
// pty, as when a user types the command in a terminal; the test plays the
// terminal through the master.
type ttyRun struct {
	cmd    *exec.Cmd
	master console.Console
	stderr *strings.Builder // berth's own messages when they matter

	mu  sync.Mutex
	out bytes.Buffer
	// readDone is closed when the master reads EOF (EIO on Linux): every
	// slave fd is closed, so berth has exited and nothing more can come.
	readDone chan struct{}
}

// startTTY sizes a new pty to rows x cols, then starts berth run --tty on
// it with args as the container's command.
//
// The size is set before berth starts because berth copies it into the
// guest's pty once, between creating and starting the container: a
// program that reads its size at once (stty size) must see it then, not
// after a later SIGWINCH.
func startTTY(t *testing.T, rows, cols uint16, args ...string) *ttyRun {
	t.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	if err := master.Resize(console.WinSize{Height: rows, Width: cols}); err != nil {
		master.Close()
		t.Fatalf("size pty: %v", err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatalf("open pty slave %s: %v", slavePath, err)
	}
	r := &ttyRun{master: master, stderr: &strings.Builder{}, readDone: make(chan struct{})}
	r.cmd = berthCmd(append([]string{"run", "--tty", "--rootfs", env.rootfs, "--"}, args...)...)
	r.cmd.Stdin, r.cmd.Stdout = slave, slave
	// berth's own errors go to a buffer so a failure can quote them
	// apart from the container's terminal output.
	r.cmd.Stderr = r.stderr
	// A session of its own with the pty as controlling terminal: what a
	// shell gives a foreground command.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = r.cmd.Start()
	// Only berth may hold the slave, or the master would never read EOF.
	slave.Close()
	if err != nil {
		master.Close()
		t.Fatalf("start berth: %v", err)
	}
	go r.readMaster()
	return r
}

func (r *ttyRun) readMaster() {
	defer close(r.readDone)
	buf := make([]byte, 4096)
	for {
		n, err := r.master.Read(buf)
		r.mu.Lock()
		r.out.Write(buf[:n])
		r.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (r *ttyRun) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.String()
}

// waitOutput waits until the terminal has shown s.
func (r *ttyRun) waitOutput(t *testing.T, s string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !strings.Contains(r.output(), s) {
		select {
		case <-r.readDone:
			r.kill()
			t.Fatalf("berth ended before the terminal showed %q; terminal:\n%q\nstderr:\n%s", s, r.output(), r.stderr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.kill()
			t.Fatalf("terminal did not show %q within %v; terminal:\n%q\nstderr:\n%s", s, limit, r.output(), r.stderr)
		}
	}
}

// typeText writes to the terminal as a user typing would.
func (r *ttyRun) typeText(t *testing.T, s string) {
	t.Helper()
	if _, err := r.master.Write([]byte(s)); err != nil {
		r.kill()
		t.Fatalf("write to pty: %v", err)
	}
}

// wait waits for berth to exit and for the terminal to drain, and returns
// berth's exit code and everything the terminal showed.
func (r *ttyRun) wait(t *testing.T, limit time.Duration) (int, string) {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- r.cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(limit):
		r.kill()
		t.Fatalf("berth run --tty did not exit within %v; terminal:\n%q\nstderr:\n%s", limit, r.output(), r.stderr)
	}
	// berth was the slave's last holder, so the master reaches EOF now.
	select {
	case <-r.readDone:
	case <-time.After(5 * time.Second):
		t.Errorf("pty master did not reach EOF after berth exited")
	}
	r.master.Close()
	return r.cmd.ProcessState.ExitCode(), r.output()
}

// kill ends berth (its QEMU and virtiofsd die with it) and releases the
// pty; for failure paths.
func (r *ttyRun) kill() {
	if r.cmd.ProcessState == nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
	}
	r.master.Close()
}

func TestRunTTYSizeAndDevice(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	r := startTTY(t, 40, 100, "/bin/sh", "-c", "stty size; tty; exit 5")
	code, out := r.wait(t, 60*time.Second)
	if code != 5 {
		t.Errorf("exit code %d, want 5; stderr:\n%s", code, r.stderr)
	}
	if !strings.Contains(out, "40 100\r") {
		t.Errorf("stty size did not print \"40 100\" (rows, columns of the host terminal); terminal:\n%q", out)
	}
	if !strings.Contains(out, "/dev/pts/") {
		t.Errorf("tty does not name a /dev/pts device; terminal:\n%q", out)
	}
	// The guest pty already turns \n into \r\n (onlcr); berth run clears
	// output processing (OPOST) on the host terminal so it is not done
	// twice, which would break programs that move the cursor with \n.
	if strings.Contains(out, "\r\r\n") {
		t.Errorf("host terminal translates output again, lines end in \\r\\r\\n: %q", out)
	}
}

func TestRunTTYTyping(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	r := startTTY(t, 24, 80, "/bin/sh")
	// Type only once the shell prompts ("# " as root): input sent while
	// berth is still booting would reach the host pty before berth puts
	// it in raw mode, and the line discipline's echo would then show it
	// twice. The prompt also shows that sh found a terminal on stdin.
	r.waitOutput(t, "# ", 60*time.Second)
	r.typeText(t, "echo typed-$((6*7))\n")
	// The guest shell, not the host, must compute the result: the typed
	// line itself (echoed back) does not contain "typed-42".
	r.waitOutput(t, "typed-42", 30*time.Second)
	r.typeText(t, "exit 4\n")
	code, out := r.wait(t, 30*time.Second)
	if code != 4 {
		t.Errorf("exit code %d, want 4; stderr:\n%s", code, r.stderr)
	}
	if !strings.Contains(out, "typed-42") {
		t.Errorf("terminal does not show typed-42:\n%q", out)
	}
}
