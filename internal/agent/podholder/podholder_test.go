package podholder

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This test binary links holder.c, so Start runs the real holder.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the holder is cloned into new namespaces")
	}
}

// inNamespace runs f on a thread that has joined pid's namespace of type
// ns (uts, ipc), then throws the thread away.
func inNamespace(t *testing.T, pid int, ns string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Setns(fd, 0)
			unix.Close(fd)
		}
		if err == nil {
			f()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatalf("join %s namespace of %d: %v", ns, pid, err)
	}
}

func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return ""
}

// The holder sets the pod's hostname and IPC sysctl in namespaces of its
// own, gives up root and every capability, reaps an orphan of its PID
// namespace, and exits 0 on SIGTERM as pause does.
func TestHolderHoldsThePodsNamespacesConfined(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	p, err := Start(unix.CLONE_NEWPID|unix.CLONE_NEWUTS|unix.CLONE_NEWIPC|unix.CLONE_NEWNS, "pod-host", root, []string{"kernel.shmmni=1234"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); p.Wait() })

	var host string
	inNamespace(t, p.Pid, "uts", func() { host, _ = os.Hostname() })
	if host != "pod-host" {
		t.Errorf("hostname in the holder's UTS namespace %q, want pod-host", host)
	}
	var shmmni []byte
	inNamespace(t, p.Pid, "ipc", func() { shmmni, _ = os.ReadFile("/proc/sys/kernel/shmmni") })
	if strings.TrimSpace(string(shmmni)) != "1234" {
		t.Errorf("kernel.shmmni in the holder's IPC namespace %q, want 1234", shmmni)
	}
	if mine, _ := os.ReadFile("/proc/sys/kernel/shmmni"); strings.TrimSpace(string(mine)) == "1234" {
		t.Errorf("kernel.shmmni reached the host's own IPC namespace")
	}
	want := map[string]string{
		"Uid": "65535\t65535\t65535\t65535", "Gid": "65535\t65535\t65535\t65535", "Groups": "",
		"CapPrm": "0000000000000000", "CapEff": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1", "NSpid": fmt.Sprintf("%d\t1", p.Pid),
	}
	for k, v := range want {
		if got := statusField(t, p.Pid, k); got != v {
			t.Errorf("holder's %s: %q, want %q", k, got, v)
		}
	}
	if r, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", p.Pid)); r != root {
		t.Errorf("holder's root %q, want %q", r, root)
	}

	// An orphan in the holder's PID namespace is re-parented to it, and
	// reaped once it exits.
	out, err := exec.Command("nsenter", "--target", fmt.Sprint(p.Pid), "--pid", "--", "/bin/sh", "-c", "sleep 0.3 & echo $!").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		zombies, alive := childrenOf(p.Pid)
		if alive == 0 && zombies == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s on, the holder still has %d live and %d unreaped children", alive, zombies)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := p.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil || !st.Exited() || st.ExitCode() != 0 {
		t.Errorf("after SIGTERM: %v, %v; want exit 0", st, err)
	}
}

// childrenOf counts pid's children that are zombies and that are not.
func childrenOf(pid int) (zombies, alive int) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		var state string
		var ppid int
		fmt.Sscanf(rest, "%s %d", &state, &ppid)
		if ppid != pid {
			continue
		}
		if state == "Z" {
			zombies++
		} else {
			alive++
		}
	}
	return zombies, alive
}

// A holder that cannot set itself up fails Start with its own reason,
// and leaves no process behind.
func TestHolderThatCannotConfineItselfSaysWhy(t *testing.T) {
	requireRoot(t)
	_, err := Start(unix.CLONE_NEWUTS, "pod-host", "/nonexistent/root", nil)
	if err == nil || !strings.Contains(err.Error(), "chroot: No such file or directory") {
		t.Fatalf("Start with a missing root: %v, want the holder's chroot error", err)
	}
	_, err = Start(unix.CLONE_NEWIPC, "", t.TempDir(), []string{"kernel.nosuchsysctl=1"})
	if err == nil || !strings.Contains(err.Error(), "sysctl kernel.nosuchsysctl") {
		t.Fatalf("Start with an unknown sysctl: %v, want the holder's sysctl error", err)
	}
}
