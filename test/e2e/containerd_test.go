package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-runtime/berth/internal/ociimage"
)

// The containerd tests run Debian's containerd (1.6.20 on Debian 12) with a
// private root, state and socket, and Berth's shim from bin/ on its PATH.
// BERTH_CONTAINERD=/path/to/containerd runs them against another build
// (the containerd 2.x lane: scripts/containerd-v2.sh), with the ctr found
// next to it.

// ctrBinary is the ctr that matches the containerd under test.
func ctrBinary() string {
	if c := os.Getenv("BERTH_CONTAINERD"); c != "" {
		if p := filepath.Join(filepath.Dir(c), "ctr"); isExecutable(p) {
			return p
		}
	}
	return "ctr"
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode()&0o111 != 0
}

// containerdV2 reports whether the containerd under test is 2.x.
func containerdV2() bool {
	return os.Getenv("BERTH_CONTAINERD") != "" && !strings.Contains(containerdVersion(), " 1.")
}

func containerdVersion() string {
	bin := os.Getenv("BERTH_CONTAINERD")
	if bin == "" {
		bin = "containerd"
	}
	out, _ := exec.Command(bin, "--version").Output()
	return string(out)
}

const (
	busyboxImage = "docker.io/library/busybox:berth"
	pauseImage   = "docker.io/library/berth-pause:latest"
	berthRuntime = "io.containerd.berth.v2"
)

var ctrd struct {
	once sync.Once
	dir  string
	sock string
	err  error
}

// containerd starts the private containerd once for the test binary and
// imports the test images.
func containerd(t *testing.T) string {
	t.Helper()
	requireE2E(t)
	ctrd.once.Do(func() { ctrd.err = startContainerd() })
	if ctrd.err != nil {
		t.Fatalf("containerd: %v", ctrd.err)
	}
	return ctrd.sock
}

func startContainerd() error {
	ctrd.dir = filepath.Join(filepath.Dir(env.runDir), "containerd")
	cmd := exec.Command(filepath.Join(repoRoot(), "scripts", "containerd-private.sh"), "start", ctrd.dir, filepath.Join(repoRoot(), "bin"))
	cmd.Env = containerdEnv()
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("start: %v: %s", err, exitStderr(err))
	}
	ctrd.sock = strings.TrimSpace(string(out))
	for _, img := range []struct {
		ref string
		cmd []string
	}{
		{busyboxImage, []string{"/bin/sh"}},
		{pauseImage, []string{"/bin/sleep", "2147483647"}},
	} {
		if err := importImage(img.ref, env.rootfs, img.cmd); err != nil {
			return err
		}
	}
	return nil
}

// importImage packs the root file system directory rootfs as image ref and
// imports it into the private containerd's default and k8s.io namespaces.
// The archive stays in the containerd directory for other instances.
func importImage(ref, rootfs string, cmd []string) error {
	archive := filepath.Join(ctrd.dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if err := ociimage.PackFile(archive, rootfs, ociimage.Options{Ref: ref, Cmd: cmd}); err != nil {
		return err
	}
	for _, ns := range []string{"default", "k8s.io"} {
		if out, err := exec.Command(ctrBinary(), "-a", ctrd.sock, "-n", ns, "images", "import", archive).CombinedOutput(); err != nil {
			return fmt.Errorf("import %s: %v: %s", ref, err, out)
		}
	}
	return nil
}

// containerdEnv is the environment of the private containerd: its shims
// read the test configuration, handler berth-split reads the one with
// per-container host cgroups, and berth-fixed-memory the one without
// elastic memory.
func containerdEnv() []string {
	return append(os.Environ(), "BERTH_CONFIG="+env.config,
		"BERTH_RUNTIME_CONFIGS="+criSplitHandler+"="+env.configSplit+" "+criFixedMemoryHandler+"="+env.configFixedMemory,
		"BERTH_SHIM_SANDBOXER_HANDLER="+criSandboxAPIHandler)
}

func stopContainerd() {
	if ctrd.dir != "" {
		exec.Command(filepath.Join(repoRoot(), "scripts", "containerd-private.sh"), "stop", ctrd.dir).Run()
	}
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// ctr runs ctr against the private containerd.
func ctr(t *testing.T, args ...string) result {
	t.Helper()
	return runCommand(t, exec.Command(ctrBinary(), append([]string{"-a", ctrd.sock}, args...)...), "")
}

func mustCtr(t *testing.T, args ...string) string {
	t.Helper()
	r := ctr(t, args...)
	if r.code != 0 {
		t.Fatalf("ctr %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// taskStatus returns the STATUS column of `ctr task ls` for id.
func taskStatus(t *testing.T, id string) string {
	t.Helper()
	for _, line := range strings.Split(mustCtr(t, "task", "ls"), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// cleanupTask removes a task and container whatever state they are in.
func cleanupTask(t *testing.T, id string) {
	ctr(t, "task", "kill", "-s", "KILL", id)
	for i := 0; i < 50 && taskStatus(t, id) == "RUNNING"; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	ctr(t, "task", "delete", id)
	ctr(t, "container", "rm", id)
}

func TestCtrRunExitCodeAndGuestKernel(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	r := ctr(t, "run", "--runtime", berthRuntime, "--rm", busyboxImage, "ctr-run",
		"sh", "-c", "echo hi; uname -r; exit 3")
	if r.code != 3 {
		t.Fatalf("exit %d, want 3; stderr:\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || lines[0] != "hi" || lines[1] != guestRelease(t) || lines[1] == hostRelease() {
		t.Fatalf("stdout %q: want hi and the guest kernel (host is %s)", r.stdout, hostRelease())
	}
	t.Logf("ctr run --rm took %v", r.elapsed)
}

func TestCtrDetachedExecMetricsPauseKillDelete(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-detached"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sh", "-c", "sleep 1000")
	defer cleanupTask(t, id)
	if st := taskStatus(t, id); st != "RUNNING" {
		t.Fatalf("task status %q after run -d", st)
	}
	r := ctr(t, "task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo x; cat /proc/1/cmdline | tr '\\0' ' '; exit 4")
	if r.code != 4 || !strings.HasPrefix(r.stdout, "x\nsleep 1000") {
		t.Fatalf("exec: exit %d, stdout %q (want 4 and x, then the init's command line); stderr:\n%s", r.code, r.stdout, r.stderr)
	}
	metrics := mustCtr(t, "task", "metrics", id)
	for _, want := range []string{"memory.usage", "cpu.usage_usec", "pids.current"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("ctr task metrics lacks %s:\n%s", want, metrics)
		}
	}
	mustCtr(t, "task", "pause", id)
	if st := taskStatus(t, id); st != "PAUSED" {
		t.Errorf("status %q after pause", st)
	}
	mustCtr(t, "task", "resume", id)
	if st := taskStatus(t, id); st != "RUNNING" {
		t.Errorf("status %q after resume", st)
	}
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, id, "STOPPED", 10*time.Second)
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

func waitStatus(t *testing.T, id, want string, limit time.Duration) {
	t.Helper()
	eventually(t, limit, fmt.Sprintf("task %s status %q", id, want), func() error {
		if st := taskStatus(t, id); st != want {
			return fmt.Errorf("task %s status %q, want %q", id, st, want)
		}
		return nil
	})
}

func TestCtrQEMUKilledReportsExit(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-qemu-killed"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	pids := qemuPids()
	if len(pids) != 1 {
		t.Fatalf("QEMU pids %v, want one", pids)
	}
	killed := time.Now()
	syscall.Kill(pids[0], syscall.SIGKILL)
	waitStatus(t, id, "STOPPED", 5*time.Second)
	t.Logf("containerd saw the task stop %v after QEMU was killed", time.Since(killed))
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// shimPids finds Berth shims serving our containerd.
func shimPids() []int {
	return pidsMatching(func(c string) bool {
		return strings.Contains(c, "containerd-shim-berth-v2") && strings.Contains(c, ctrd.sock)
	})
}

func TestCtrShimKilledLeavesNothing(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-shim-killed"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	shims := shimPids()
	if len(shims) != 1 {
		t.Fatalf("shim pids %v, want one", shims)
	}
	syscall.Kill(shims[0], syscall.SIGKILL)
	// QEMU dies with its shim; containerd notices the shim is gone, runs
	// `shim delete`, and reports the task stopped.
	deadline := time.Now().Add(10 * time.Second)
	for len(qemuPids()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if p := qemuPids(); len(p) > 0 {
		t.Errorf("QEMU %v outlived its shim", p)
	}
	// containerd 1.6 deletes the task of a dead shim itself; a newer one
	// may report it stopped first.
	eventually(t, 10*time.Second, "task "+id+" no longer RUNNING after its shim was killed", func() error {
		if st := taskStatus(t, id); st == "RUNNING" {
			return fmt.Errorf("task %s still %s", id, st)
		}
		return nil
	})
	ctr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

func TestCtrContainerdRestartKeepsTask(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-restart"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	stopContainerd()
	ctrd.once = sync.Once{}
	if err := restartContainerd(); err != nil {
		t.Fatal(err)
	}
	if st := taskStatus(t, id); st != "RUNNING" {
		t.Fatalf("after containerd restart the task is %q, want RUNNING", st)
	}
	r := ctr(t, "task", "exec", "--exec-id", "after-restart", id, "echo", "still here")
	if r.code != 0 || r.stdout != "still here\n" {
		t.Fatalf("exec after restart: exit %d, %q, %s", r.code, r.stdout, r.stderr)
	}
}

// restartContainerd starts containerd again on the same directories.
func restartContainerd() error {
	cmd := exec.Command(filepath.Join(repoRoot(), "scripts", "containerd-private.sh"), "start", ctrd.dir, filepath.Join(repoRoot(), "bin"))
	cmd.Env = containerdEnv()
	if out, err := cmd.Output(); err != nil {
		return fmt.Errorf("restart containerd: %v: %s %s", err, out, exitStderr(err))
	}
	ctrd.once.Do(func() {})
	return nil
}

func TestCtrPodAnnotationsAreAllowListed(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	for _, tc := range []struct{ annotation, want string }{
		{"io.berth.config.hypervisor.path=/tmp/evil-qemu", "cannot be set by pods"},
		{"io.berth.config.hypervisor.default_vcpus=2", "runtime.enable_annotations"},
	} {
		id := "ctr-annotation"
		r := ctr(t, "run", "--rm", "--runtime", berthRuntime, "--annotation", tc.annotation, busyboxImage, id, "true")
		ctr(t, "container", "rm", id)
		if r.code == 0 {
			t.Errorf("%s: container ran", tc.annotation)
			continue
		}
		if !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: error does not say %q:\n%s", tc.annotation, tc.want, r.stderr)
		}
	}
	if p := qemuPids(); len(p) > 0 {
		t.Errorf("a VM was started despite a rejected annotation: %v", p)
	}
}

// TestCtrOOMKillPublishesTaskOOM: a container the guest kernel OOM-kills
// is reported to containerd with /tasks/oom, before its /tasks/exit.
func TestCtrOOMKillPublishesTaskOOM(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	out := ctrEvents(t)
	// A 16 MiB limit and a shell that builds a 40 MiB string: the guest
	// kernel OOM-kills it, and containerd must hear about it.
	r := ctr(t, "run", "--rm", "--runtime", berthRuntime, "--memory-limit", "16777216", busyboxImage, "ctr-oom",
		"sh", "-c", "x=$(head -c 40m /dev/zero | tr '\\0' x); echo survived ${#x}")
	if r.code == 0 {
		t.Fatalf("the container survived its memory limit: %q", r.stdout)
	}
	eventually(t, 5*time.Second, "/tasks/oom and /tasks/exit events", func() error {
		if ev := out.String(); !strings.Contains(ev, "/tasks/oom") || !strings.Contains(ev, "/tasks/exit") {
			return fmt.Errorf("no /tasks/oom event, or no /tasks/exit; exit %d; events:\n%s", r.code, ev)
		}
		return nil
	})
	// As under runc: the kill is reported before the exit it caused, so
	// that CRI records the container as OOMKilled.
	if ev := out.String(); strings.Index(ev, "/tasks/oom") > strings.Index(ev, "/tasks/exit") {
		t.Errorf("/tasks/oom came after /tasks/exit:\n%s", ev)
	}
}

// ctrEvents streams `ctr events` of our containerd into the returned
// buffer until the test ends.
func ctrEvents(t *testing.T) *syncBuffer {
	t.Helper()
	events := exec.Command(ctrBinary(), "-a", ctrd.sock, "events")
	out := &syncBuffer{}
	events.Stdout = out
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { events.Process.Kill(); events.Wait() })
	return out
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
