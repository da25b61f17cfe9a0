package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerdLog returns what containerd (and the shims it started, whose
// logs it relays) has logged so far.
func containerdLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ctrd.dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCtrVirtiofsdKilledStopsTask: virtiofsd serves the container's root
// file system; when it dies the sandbox fails as a whole: the task is
// reported stopped, with the reason in the shim's log, and delete works
// without the guest.
func TestCtrVirtiofsdKilledStopsTask(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-virtiofsd-killed"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	pids := virtiofsdPids()
	if len(pids) == 0 {
		t.Fatal("no virtiofsd for the sandbox")
	}
	killed := time.Now()
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	waitStatus(t, id, "STOPPED", 10*time.Second)
	t.Logf("containerd saw the task stop %v after virtiofsd was killed", time.Since(killed))
	r := ctr(t, "task", "ls")
	if !strings.Contains(r.stdout, id) {
		t.Fatalf("task gone before delete:\n%s", r.stdout)
	}
	start := time.Now()
	mustCtr(t, "task", "delete", id)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("ctr task delete took %v", d)
	}
	mustCtr(t, "container", "rm", id)
	if l := containerdLog(t); !strings.Contains(l, "virtiofsd (pid") || !strings.Contains(l, "while the VM was running") {
		t.Errorf("the shim's log does not say virtiofsd died")
	}
}

// TestCtrExecIntoPausedTaskRefused: runc's shim refuses an exec into a
// paused task at once (containerd 1.6 and 2.x used to hang on Berth, and
// resume, kill and delete with it); the task still resumes.
func TestCtrExecIntoPausedTaskRefused(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-exec-paused"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	mustCtr(t, "task", "pause", id)
	r := ctr(t, "task", "exec", "--exec-id", "in-paused", id, "echo", "no")
	if r.code == 0 || !strings.Contains(r.stderr, "cannot exec in a paused state") || !strings.Contains(r.stderr, "failed precondition") {
		t.Fatalf("exec into a paused task: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r.elapsed > 2*time.Second {
		t.Errorf("refusing the exec took %v", r.elapsed)
	}
	mustCtr(t, "task", "resume", id)
	if st := taskStatus(t, id); st != "RUNNING" {
		t.Fatalf("status %q after resume", st)
	}
	r = ctr(t, "task", "exec", "--exec-id", "after-resume", id, "echo", "yes")
	if r.code != 0 || r.stdout != "yes\n" {
		t.Fatalf("exec after resume: exit %d, %q, %s", r.code, r.stdout, r.stderr)
	}
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, id, "STOPPED", 10*time.Second)
	// Kill of an exited task succeeds, as CRI expects.
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// TestCtrExecIntoStoppedTaskRefused: the exec never reaches the guest
// (it used to fail there with "lstat /proc/N/ns/ipc" and a TaskExit 255).
func TestCtrExecIntoStoppedTaskRefused(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-exec-stopped"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "true")
	defer cleanupTask(t, id)
	waitStatus(t, id, "STOPPED", 30*time.Second)
	r := ctr(t, "task", "exec", "--exec-id", "in-stopped", id, "echo", "no")
	if r.code == 0 || !strings.Contains(r.stderr, "cannot exec in a stopped state") || !strings.Contains(r.stderr, "failed precondition") {
		t.Fatalf("exec into a stopped task: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// badConfig writes a test-private configuration with a value of the wrong
// type (the machine's /etc/berth is never touched).
func badConfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bad.toml")
	cfg := fmt.Sprintf("state_dir = %q\nrun_dir = %q\n[hypervisor]\ndefault_memory = \"lots\"\n[cgroup]\nparent = %q\n", env.stateDir, env.runDir, env.cgroupParent)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCtrBadConfigPathFailsCreateNotShim: a runtime's ConfigPath naming a
// malformed file fails the create with the key named; the pod's shim,
// serving a running container, survives the request.
func TestCtrBadConfigPathFailsCreateNotShim(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const pod = "ctr-badcfg-pod"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, pod, "sleep", "1000")
	defer cleanupTask(t, pod)
	shims := shimPids()
	if len(shims) != 1 {
		t.Fatalf("shim pids %v, want one", shims)
	}
	bad := badConfig(t)
	for i := 0; i < 2; i++ {
		const app = "ctr-badcfg-app"
		// The CRI annotations send the container to the pod's shim.
		r := ctr(t, "run", "--rm", "--runtime", berthRuntime, "--runtime-config-path", bad,
			"--annotation", "io.kubernetes.cri.sandbox-id="+pod, "--annotation", "io.kubernetes.cri.container-type=container",
			busyboxImage, app, "true")
		ctr(t, "container", "rm", app)
		if r.code == 0 || !strings.Contains(r.stderr, "hypervisor.default_memory") {
			t.Fatalf("create %d with a malformed ConfigPath: exit %d, stderr %q; want an error naming hypervisor.default_memory", i, r.code, r.stderr)
		}
		if err := syscall.Kill(shims[0], 0); err != nil {
			t.Fatalf("the pod's shim (pid %d) died of the request: %v", shims[0], err)
		}
	}
	if st := taskStatus(t, pod); st != "RUNNING" {
		t.Fatalf("pod task %q after the failed creates", st)
	}
}

// TestCtrBadDefaultConfigFailsEveryCreate: a malformed default
// configuration (BERTH_CONFIG, which the shim inherits from containerd)
// gives every create an error naming the key, not a crashed shim ("ttrpc:
// closed"); no VM is started.
func TestCtrBadDefaultConfigFailsEveryCreate(t *testing.T) {
	containerd(t) // imports the image archives
	defer assertNoLeaks(t)
	dir := filepath.Join(filepath.Dir(env.runDir), "containerd-badcfg")
	script := filepath.Join(repoRoot(), "scripts", "containerd-private.sh")
	cmd := exec.Command(script, "start", dir, filepath.Join(repoRoot(), "bin"))
	cmd.Env = append(os.Environ(), "BERTH_CONFIG="+badConfig(t))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("start containerd: %v: %s", err, exitStderr(err))
	}
	defer exec.Command(script, "stop", dir).Run()
	sock := strings.TrimSpace(string(out))
	archive := filepath.Join(ctrd.dir, "docker.io_library_busybox_berth.tar")
	if out, err := exec.Command("ctr", "-a", sock, "images", "import", archive).CombinedOutput(); err != nil {
		t.Fatalf("import: %v: %s", err, out)
	}
	for i := 0; i < 2; i++ {
		id := fmt.Sprintf("ctr-badcfg-%d", i)
		r := runCommand(t, exec.Command("ctr", "-a", sock, "run", "--rm", "--runtime", berthRuntime, busyboxImage, id, "true"), "")
		exec.Command("ctr", "-a", sock, "container", "rm", id).Run()
		if r.code == 0 || !strings.Contains(r.stderr, "hypervisor.default_memory") || strings.Contains(r.stderr, "ttrpc: closed") {
			t.Fatalf("create %d: exit %d, stderr %q; want an error naming hypervisor.default_memory", i, r.code, r.stderr)
		}
	}
	if p := qemuPids(); len(p) > 0 {
		t.Errorf("a VM was started with a malformed configuration: %v", p)
	}
	// A valid ConfigPath still works next to the malformed default, all
	// the way through (sizing the VM used the missing default config and
	// crashed the shim: a nil pointer, "ttrpc: closed").
	r := runCommand(t, exec.Command("ctr", "-a", sock, "run", "--rm", "--runtime", berthRuntime, "--runtime-config-path", env.config,
		"--memory-limit", "67108864", busyboxImage, "ctr-goodcfg", "echo", "ok"), "")
	exec.Command("ctr", "-a", sock, "container", "rm", "ctr-goodcfg").Run()
	if r.code != 0 || r.stdout != "ok\n" {
		t.Fatalf("a good ConfigPath next to a malformed default: exit %d, %q, %s", r.code, r.stdout, r.stderr)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
	if strings.Contains(string(b), "panic:") {
		t.Errorf("a shim panicked:\n%s", b)
	}
	// Its shims exit once containerd has given up on the tasks.
	eventually(t, 10*time.Second, "the shims exit after their failed creates", func() error {
		left := pidsMatching(func(c string) bool {
			return strings.Contains(c, "containerd-shim-berth-v2") && strings.Contains(c, sock)
		})
		if len(left) > 0 {
			return fmt.Errorf("shims %v outlived their failed creates", left)
		}
		return nil
	})
}

// TestCtrMemoryLimitBounds: a container limit above what the VM can ever
// have (hypervisor.default_maxmemory) is refused at create, naming the
// key, instead of being clamped; `berth resize` below a running
// container's limit is refused and changes nothing.
func TestCtrMemoryLimitBounds(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	r := ctr(t, "run", "--rm", "--runtime", berthRuntime, "--memory-limit", "34359738368", busyboxImage, "ctr-limit-huge", "true")
	ctr(t, "container", "rm", "ctr-limit-huge")
	if r.code == 0 || !strings.Contains(r.stderr, "hypervisor.default_maxmemory") {
		t.Fatalf("32 GiB limit: exit %d, stderr %q; want an error naming hypervisor.default_maxmemory", r.code, r.stderr)
	}

	const id = "ctr-limit-floor"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--memory-limit", "1073741824", busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	before := berthStatus(t, id).Memory.GuestCurrentMiB
	r = berth(t, "", "resize", id, "--memory", "512M")
	if r.code == 0 || !strings.Contains(r.stderr, "memory limits") {
		t.Fatalf("resize below the container's 1 GiB limit: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if after := berthStatus(t, id).Memory.GuestCurrentMiB; after != before {
		t.Errorf("a refused resize changed the VM from %d to %d MiB", before, after)
	}
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, id, "STOPPED", 10*time.Second)
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// TestCtrExecFailureClasses: the shim reports a program that does not
// exist as NotFound and one that cannot be executed as PermissionDenied
// (containerd's classes), for a task and for an exec, and the task stays
// usable after a failed exec.
func TestCtrExecFailureClasses(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	r := ctr(t, "run", "--rm", "--runtime", berthRuntime, busyboxImage, "ctr-nosuch", "/no/such/cmd")
	ctr(t, "container", "rm", "ctr-nosuch")
	if r.code == 0 || !strings.Contains(r.stderr, "no such file or directory: not found") {
		t.Fatalf("run /no/such/cmd: exit %d, stderr %q; want a NotFound error", r.code, r.stderr)
	}
	const id = "ctr-exec-classes"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	r = ctr(t, "task", "exec", "--exec-id", "nosuch", id, "no-such-cmd")
	if r.code == 0 || !strings.Contains(r.stderr, "executable file not found in $PATH: not found") {
		t.Errorf("exec no-such-cmd: exit %d, stderr %q; want a NotFound error", r.code, r.stderr)
	}
	r = ctr(t, "task", "exec", "--exec-id", "noexec", id, "/etc/passwd")
	if r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("exec /etc/passwd: exit %d, stderr %q; want a PermissionDenied error", r.code, r.stderr)
	}
	r = ctr(t, "task", "exec", "--exec-id", "ok", id, "echo", "fine")
	if r.code != 0 || r.stdout != "fine\n" {
		t.Fatalf("exec after failed execs: exit %d, %q, %s", r.code, r.stdout, r.stderr)
	}
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, id, "STOPPED", 10*time.Second)
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// TestCtrNonRecursiveReadOnlyMount: a read-only bind mount ("rbind,ro",
// what CRI gives a readOnly volume) of a directory holding a writable
// mount is read-only at the top and writable in the submount, as under
// runc: virtiofsd announces submounts, so the guest keeps them apart.
func TestCtrNonRecursiveReadOnlyMount(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	dir := t.TempDir()
	vol, subSrc := filepath.Join(dir, "vol"), filepath.Join(dir, "sub-src")
	for _, d := range []string{filepath.Join(vol, "sub"), subSrc} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mount(subSrc, filepath.Join(vol, "sub"), "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(filepath.Join(vol, "sub"), syscall.MNT_DETACH)
	script := `touch /vol/sub/ok && echo sub-writable; touch /vol/top 2>/dev/null && echo top-writable || echo top-read-only`
	want := "sub-writable\ntop-read-only\n"
	for _, rt := range []string{"io.containerd.runc.v2", berthRuntime} {
		id := "ctr-rro-" + strings.ReplaceAll(rt, ".", "-")
		r := ctr(t, "run", "--rm", "--runtime", rt, "--mount", "type=bind,src="+vol+",dst=/vol,options=rbind:ro", busyboxImage, id, "sh", "-c", script)
		ctr(t, "container", "rm", id)
		if r.code != 0 || r.stdout != want {
			t.Errorf("%s: exit %d, stdout %q, want %q; stderr:\n%s", rt, r.code, r.stdout, want, r.stderr)
		}
		os.Remove(filepath.Join(subSrc, "ok"))
	}
}
