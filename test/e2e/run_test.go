package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/guest"
)

func memTotalKiB(t *testing.T, meminfo string) int {
	t.Helper()
	return memInfoKiB(t, meminfo, "MemTotal")
}

// memInfoKiB reads field (MemTotal, MemAvailable, ...) of /proc/meminfo
// text.
func memInfoKiB(t *testing.T, meminfo, field string) int {
	t.Helper()
	m := regexp.MustCompile(regexp.QuoteMeta(field) + `:\s+(\d+) kB`).FindStringSubmatch(meminfo)
	if m == nil {
		t.Fatalf("no %s in %q", field, meminfo)
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

func hostRelease() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}

// guestRelease is the release of the guest image's kernel, from its
// manifest: the Debian cloud kernel or Berth's own, whichever the state
// directory holds.
func guestRelease(t *testing.T) string {
	t.Helper()
	a, err := guest.Inspect(filepath.Join(env.stateDir, "guest"))
	if err != nil {
		t.Fatalf("guest image: %v", err)
	}
	return a.KernelVersion
}

func TestRunPrintsOutputAndExitCode(t *testing.T) {
	requireE2E(t)
	r := berth(t, "", "run", "--rootfs", env.rootfs, "--", "/bin/sh", "-c",
		"echo hello; cat /proc/meminfo | head -1; uname -r; exit 7")
	defer assertNoLeaks(t)
	if r.code != 7 {
		t.Fatalf("exit code %d, want 7; stderr:\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || lines[0] != "hello" {
		t.Fatalf("stdout = %q, want hello, MemTotal, kernel release", r.stdout)
	}
	guestKiB := memTotalKiB(t, lines[1])
	hostInfo, _ := os.ReadFile("/proc/meminfo")
	hostKiB := memTotalKiB(t, string(hostInfo))
	// The default VM has 256 MiB: the guest sees a little less (the
	// kernel's own reservations), and nothing like the host's memory.
	if guestKiB > 256*1024 || guestKiB < 150*1024 || guestKiB == hostKiB {
		t.Errorf("guest MemTotal = %d KiB (host %d KiB), want just under 256 MiB", guestKiB, hostKiB)
	}
	if rel := lines[2]; rel != guestRelease(t) || rel == hostRelease() {
		t.Errorf("uname -r = %q; want the guest image's kernel %q, not the host's %q", rel, guestRelease(t), hostRelease())
	}
	t.Logf("berth run took %v", r.elapsed)
}

func TestRunRelaysStdin(t *testing.T) {
	requireE2E(t)
	r := berth(t, "abc\n", "run", "--rootfs", env.rootfs, "--", "cat")
	defer assertNoLeaks(t)
	if r.code != 0 || r.stdout != "abc\n" {
		t.Fatalf("stdout %q, code %d, want \"abc\\n\", 0; stderr:\n%s", r.stdout, r.code, r.stderr)
	}
}

func TestRunLargeOutputArrivesIntact(t *testing.T) {
	requireE2E(t)
	// The guest writes 10 MiB of random bytes to stdout and their SHA-256
	// to stderr; the host must receive exactly those bytes.
	r := berth(t, "", "run", "--rootfs", env.rootfs, "--", "/bin/sh", "-c",
		"head -c 10485760 /dev/urandom > /tmp/out; sha256sum /tmp/out >&2; cat /tmp/out")
	defer assertNoLeaks(t)
	if r.code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
	}
	if len(r.stdout) != 10<<20 {
		t.Fatalf("got %d bytes of output, want %d", len(r.stdout), 10<<20)
	}
	sum := sha256.Sum256([]byte(r.stdout))
	want := strings.Fields(r.stderr)
	if len(want) == 0 || want[0] != hex.EncodeToString(sum[:]) {
		t.Fatalf("output sha256 %x, guest says %q", sum, r.stderr)
	}
}

func TestRunResources(t *testing.T) {
	requireE2E(t)
	r := berth(t, "", "run", "--memory", "512M", "--cpus", "2", "--rootfs", env.rootfs, "--",
		"/bin/sh", "-c", "head -1 /proc/meminfo; nproc")
	defer assertNoLeaks(t)
	if r.code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("stdout %q", r.stdout)
	}
	if kib := memTotalKiB(t, lines[0]); kib > 512*1024 || kib < 400*1024 {
		t.Errorf("MemTotal %d KiB with --memory 512M", kib)
	}
	if lines[1] != "2" {
		t.Errorf("nproc = %q with --cpus 2", lines[1])
	}
}

// startRun starts berth run with a script that prints "ready" first and
// returns once it has.
func startRun(t *testing.T, script string) (*exec.Cmd, *bufio.Reader, *strings.Builder) {
	t.Helper()
	return startRunWith(t, nil, script)
}

// startRunWith is startRun with more berth run flags (--memory 1G).
func startRunWith(t *testing.T, flags []string, script string) (*exec.Cmd, *bufio.Reader, *strings.Builder) {
	t.Helper()
	args := append(append([]string{"run"}, flags...), "--rootfs", env.rootfs, "--", "/bin/sh", "-c", script)
	return startReady(t, berthCmd(args...))
}

// startReady starts cmd, a berth run whose container prints "ready"
// first, and returns once it has.
func startReady(t *testing.T, cmd *exec.Cmd) (*exec.Cmd, *bufio.Reader, *strings.Builder) {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	if line, _ := br.ReadString('\n'); line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("first line %q, want ready; stderr:\n%s", line, stderr.String())
	}
	return cmd, br, stderr
}

// waitCmd waits for berth run to exit, failing the test after limit.
func waitCmd(t *testing.T, cmd *exec.Cmd, br *bufio.Reader, limit time.Duration) (code int, rest string) {
	t.Helper()
	done := make(chan string, 1)
	go func() { s, _ := bufioReadAll(br); cmd.Wait(); done <- s }()
	select {
	case rest = <-done:
		return cmd.ProcessState.ExitCode(), rest
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		t.Fatalf("berth run did not exit within %v", limit)
		return 0, ""
	}
}

func TestRunSecondSignalKills(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	// sleep as the container's init ignores SIGTERM (PID 1 of its PID
	// namespace, no handler): the second signal must escalate to SIGKILL,
	// and the exit code must say so.
	cmd, br, stderr := startRun(t, "echo ready; exec sleep 1000")
	cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if code, _ := waitCmd(t, cmd, br, 30*time.Second); code != 128+9 {
		t.Fatalf("exit %d, want 137 (SIGKILL); stderr:\n%s", code, stderr.String())
	}
}

func TestRunForwardsSIGTERM(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cmd, br, stderr := startRun(t, `trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done`)
	cmd.Process.Signal(syscall.SIGTERM)
	code, rest := waitCmd(t, cmd, br, 30*time.Second)
	if code != 3 || rest != "got TERM\n" {
		t.Fatalf("after SIGTERM: exit %d, output %q, want 3 and \"got TERM\"; stderr:\n%s", code, rest, stderr.String())
	}
}

func bufioReadAll(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	_, err := br.WriteTo(&sb)
	return sb.String(), err
}

// qemuPids finds the QEMU processes of this test run's sandboxes.
func qemuPids() []int {
	return pidsMatching(func(c string) bool { return strings.Contains(c, "qemu-system") && strings.Contains(c, env.runDir) })
}

func TestQEMUKilledMidRun(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cmd, br, stderr := startRun(t, "echo ready; sleep 1000")
	pids := qemuPids()
	if len(pids) != 1 {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("found QEMU pids %v, want one", pids)
	}
	syscall.Kill(pids[0], syscall.SIGKILL)
	code, _ := waitCmd(t, cmd, br, 15*time.Second)
	if code != 125 {
		t.Errorf("berth run exited %d after its VM was killed, want 125", code)
	}
	if !strings.Contains(stderr.String(), "signal 9") {
		t.Errorf("stderr does not say the VM was killed by signal 9:\n%s", stderr.String())
	}
}

func TestBadInputGivesOneClearLine(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "bad.toml")
	os.WriteFile(badCfg, []byte("[hypervisor]\nmachine = \"pc\"\n"), 0o644)
	emptyState := filepath.Join(dir, "empty-state")
	os.MkdirAll(emptyState, 0o755)
	for _, tc := range []struct {
		name string
		args []string
		want []string // substrings of the one error line
	}{
		{"bad config value", []string{"--config", badCfg, "run", "--rootfs", env.rootfs, "--", "true"}, []string{"hypervisor.machine", "q35"}},
		{"missing rootfs", []string{"--config", env.config, "run", "--rootfs", filepath.Join(dir, "nope"), "--", "true"}, []string{"--rootfs", "not a directory"}},
		{"missing guest image", []string{"--config", env.config, "--state-dir", emptyState, "run", "--rootfs", env.rootfs, "--", "true"}, []string{"berth guest build"}},
		{"bad memory flag", []string{"--config", env.config, "run", "--memory", "12Q", "--rootfs", env.rootfs, "--", "true"}, []string{"--memory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(env.berth, tc.args...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			if err == nil {
				t.Fatal("exited 0")
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Count(msg, "\n") != 0 {
				t.Errorf("want one line, got:\n%s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
	assertNoLeaks(t)
}

func TestCheckNamesAccelerator(t *testing.T) {
	requireE2E(t)
	r := berth(t, "", "check")
	if r.code != 0 {
		t.Fatalf("berth check exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	out := strings.ToLower(r.stdout)
	if !strings.Contains(out, "tcg") && !strings.Contains(out, "kvm") {
		t.Fatalf("berth check does not name the accelerator:\n%s", r.stdout)
	}
}

// TestBootTimeoutIsAClearError: a guest that does not answer in time is an
// error naming hypervisor.boot_timeout, never a crash, and leaves nothing
// behind (a nil agent reply once made this path panic).
func TestBootTimeoutIsAClearError(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	// 100 ms: QEMU alone takes longer to start; a whole boot takes
	// ~0.6 s under TCG here (it once took more than the 1 s used before).
	cfg := writeConfigVariant(t, "[hypervisor]\nboot_timeout = \"100ms\"\n")
	r := berth(t, "", "--config", cfg, "run", "--rootfs", env.rootfs, "--", "true")
	if r.code != 125 || !strings.Contains(r.stderr, "hypervisor.boot_timeout") || strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "nil pointer") {
		t.Fatalf("exit %d, stderr:\n%s\nwant 125 and an error naming hypervisor.boot_timeout", r.code, r.stderr)
	}
}

// TestRunExitCodesForExecFailures: as with Docker, Podman or a shell, a
// program that does not exist exits 127 and one that cannot be executed
// 126; 125 stays Berth's (and the VM's) own failure.
func TestRunExitCodesForExecFailures(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	for _, tc := range []struct {
		cmd  string
		code int
	}{
		{"/no/such/cmd", 127},
		{"no-such-cmd-in-path", 127},
		{"/etc/passwd", 126}, // a file without the execute bit
	} {
		r := berth(t, "", "run", "--rootfs", env.rootfs, "--", tc.cmd)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.cmd) {
			t.Errorf("berth run -- %s: exit %d, want %d; stderr:\n%s", tc.cmd, r.code, tc.code, r.stderr)
		}
	}
}

// TestBootsBeyondBootConcurrencyWaitTheirTurn: with
// hypervisor.boot_concurrency = 1, three `berth run`s started together
// all succeed, and the ones that found the slot taken say they waited
// for it before starting QEMU.
func TestBootsBeyondBootConcurrencyWaitTheirTurn(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cfg := writeConfigVariant(t, "[hypervisor]\nboot_concurrency = 1\n")
	const n = 3
	cmds := make([]*exec.Cmd, n)
	outs := make([]*bytes.Buffer, n)
	errOuts := make([]*bytes.Buffer, n)
	for i := range cmds {
		cmds[i] = berthCmd("--config", cfg, "--log-level", "info", "run", "--rootfs", env.rootfs, "--", "echo", "ok")
		outs[i], errOuts[i] = &bytes.Buffer{}, &bytes.Buffer{}
		cmds[i].Stdout, cmds[i].Stderr = outs[i], errOuts[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	results := make([]result, n)
	for i, c := range cmds {
		err := c.Wait()
		results[i] = result{stdout: outs[i].String(), stderr: errOuts[i].String()}
		if ee, ok := err.(*exec.ExitError); ok {
			results[i].code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	waited := 0
	for i, r := range results {
		if r.code != 0 || strings.TrimSpace(r.stdout) != "ok" {
			t.Errorf("run %d: exit %d, stdout %q, stderr:\n%s", i, r.code, r.stdout, r.stderr)
		}
		if strings.Contains(r.stderr, "waiting to boot") && strings.Contains(r.stderr, "hypervisor.boot_concurrency") {
			waited++
		}
	}
	if waited == 0 {
		t.Errorf("none of %d runs waited for the one boot slot:\n%s\n%s\n%s", n, results[0].stderr, results[1].stderr, results[2].stderr)
	}
}

// A container reads the host's time, not the emulated RTC's whole
// seconds: without the agent setting the guest's clock from the host's
// at connect, the guest ran up to a second behind (measured 0.99 s), and
// exit times it reported came before the container's start.
func TestContainerClockFollowsTheHosts(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cmd := berthCmd("run", "--rootfs", env.rootfs, "--", "/bin/sh", "-c", "echo ready; read go; adjtimex | grep 'time\\.tv_'")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd, br, stderr := startReady(t, cmd)
	before := time.Now()
	io.WriteString(stdin, "go\n")
	stdin.Close()
	code, rest := waitCmd(t, cmd, br, time.Minute)
	after := time.Now()
	if code != 0 {
		t.Fatalf("exit %d, output %q; stderr:\n%s", code, rest, stderr.String())
	}
	var sec, usec int64
	for _, line := range strings.Split(rest, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			t.Fatalf("adjtimex line %q: %v", line, err)
		}
		switch f[0] {
		case "time.tv_sec:":
			sec = n
		case "time.tv_usec:":
			usec = n
		}
	}
	if sec == 0 {
		t.Fatalf("no time in the container's output %q", rest)
	}
	guest := time.Unix(sec, usec*1000)
	// The guest's clock is set to the host's time of sending, so it
	// trails by that request's transit: 6-25 ms measured, while the host
	// goes on with the container's create.
	const slack = 200 * time.Millisecond
	if guest.Before(before.Add(-slack)) || guest.After(after) {
		t.Errorf("the container read %s; the host's clock was %s when it asked and %s when it heard: the guest is %v off",
			guest.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano), guest.Sub(before))
	}
	t.Logf("guest %v after the host asked (the host heard %v later)", guest.Sub(before), after.Sub(before))
}
