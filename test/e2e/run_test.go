package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
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
)

func memTotalKiB(t *testing.T, meminfo string) int {
	t.Helper()
	m := regexp.MustCompile(`MemTotal:\s+(\d+) kB`).FindStringSubmatch(meminfo)
	if m == nil {
		t.Fatalf("no MemTotal in %q", meminfo)
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

func hostRelease() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
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
	if rel := lines[2]; !strings.HasSuffix(rel, "-cloud-amd64") || rel == hostRelease() {
		t.Errorf("uname -r = %q; want the guest's cloud kernel, not the host's %q", rel, hostRelease())
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

func TestRunResourcesAndSignalExit(t *testing.T) {
	requireE2E(t)
	r := berth(t, "", "run", "--memory", "512M", "--cpus", "2", "--rootfs", env.rootfs, "--",
		"/bin/sh", "-c", "head -1 /proc/meminfo; nproc; kill -9 $$")
	defer assertNoLeaks(t)
	if r.code != 128+9 {
		t.Fatalf("exit %d, want 137 (killed by SIGKILL); stderr:\n%s", r.code, r.stderr)
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

func TestRunForwardsSIGTERM(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cmd := berthCmd("run", "--rootfs", env.rootfs, "--", "/bin/sh", "-c",
		`trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	if line, _ := br.ReadString('\n'); line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("first line %q; stderr:\n%s", line, stderr.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	rest, _ := bufioReadAll(br)
	err = cmd.Wait()
	code := cmd.ProcessState.ExitCode()
	if code != 3 || rest != "got TERM\n" {
		t.Fatalf("after SIGTERM: exit %d (%v), output %q, want 3 and \"got TERM\"; stderr:\n%s", code, err, rest, stderr.String())
	}
}

func bufioReadAll(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	_, err := br.WriteTo(&sb)
	return sb.String(), err
}

// qemuPids finds the QEMU processes serving the sandbox of this test run.
func qemuPids() []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		c := string(b)
		if strings.Contains(c, "qemu-system") && strings.Contains(c, env.runDir) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestQEMUKilledMidRun(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cmd := berthCmd("run", "--rootfs", env.rootfs, "--", "/bin/sh", "-c", "echo ready; sleep 1000")
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	if line, _ := br.ReadString('\n'); line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("first line %q; stderr:\n%s", line, stderr.String())
	}
	pids := qemuPids()
	if len(pids) != 1 {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("found QEMU pids %v, want one", pids)
	}
	syscall.Kill(pids[0], syscall.SIGKILL)
	done := make(chan error, 1)
	go func() { bufioReadAll(br); done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("berth run did not exit within 15s of QEMU being killed")
	}
	if code := cmd.ProcessState.ExitCode(); code == 0 {
		t.Fatalf("berth run exited 0 after its VM was killed")
	}
	if !strings.Contains(stderr.String(), "signal 9") && !strings.Contains(stderr.String(), "killed") {
		t.Errorf("stderr does not say the VM was killed:\n%s", stderr.String())
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
