package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// Two pods' QEMUs each run as an unprivileged uid of their own (not root,
// not each other's: one compromised QEMU must not be able to ptrace
// another), without capabilities, under QEMU's seccomp sandbox.
func TestQEMURunsConfined(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	ids := []string{"confined-a", "confined-b"}
	for _, id := range ids {
		mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
		defer cleanupTask(t, id)
	}
	pids := qemuPids()
	if len(pids) != 2 {
		t.Fatalf("QEMU pids %v for two tasks, want two", pids)
	}
	uids := map[string]bool{}
	uidRE := regexp.MustCompile(`(?m)^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$`)
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		st := string(b)
		m := uidRE.FindStringSubmatch(st)
		if m == nil || m[1] == "0" || m[1] != m[2] || m[1] != m[3] || m[1] != m[4] {
			t.Errorf("QEMU %d runs as uids %v, want one unprivileged uid", pid, m)
		} else {
			uids[m[1]] = true
		}
		for _, want := range []string{"Seccomp:\t2", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"} {
			if !strings.Contains(st, want) {
				t.Errorf("QEMU %d: /proc status lacks %q", pid, want)
			}
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmdline), "-sandbox\x00on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny") {
			t.Errorf("QEMU %d runs without -sandbox: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
		// The sandbox secret reaches the guest as a fw_cfg file that only
		// this QEMU's uid (and root) can read, never on a command line.
		secretRE := regexp.MustCompile("-fw_cfg\x00name=opt/berth/secret,file=([^\x00]+)")
		sm := secretRE.FindStringSubmatch(string(cmdline))
		if sm == nil || !strings.Contains(string(cmdline), "berth.auth=1") {
			t.Errorf("QEMU %d gets no sandbox secret: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		} else if fi, err := os.Stat(sm[1]); err != nil {
			t.Errorf("secret file: %v", err)
		} else if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o400 || m != nil && fmt.Sprint(st.Uid) != m[1] || fi.Size() != 32 {
			t.Errorf("secret %s: mode %v owner %d size %d, want 0400, QEMU's uid %v, 32 bytes", sm[1], fi.Mode(), st.Uid, fi.Size(), m)
		}
	}
	if len(uids) != 2 {
		t.Errorf("the two QEMUs share uid %v, want one each", uids)
	}
	// The pods still work: exec answers.
	for _, id := range ids {
		if r := ctr(t, "task", "exec", "--exec-id", "e", id, "true"); r.code != 0 {
			t.Errorf("exec in %s: exit %d: %s", id, r.code, r.stderr)
		}
	}
}

// A block device that backs a file system mounted on the host is never
// hot-plugged (a privileged pod lists every host disk): the container
// fails to start, naming the mount, and nothing is left.
func TestDeviceMountedOnTheHostIsRefused(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	d := newLoopDisk(t)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", d.dev).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", d.dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	const id = "dev-mounted"
	r := ctr(t, "run", "--runtime", berthRuntime, "--rm", "--device", d.dev, busyboxImage, id, "true")
	cleanupTask(t, id)
	if r.code == 0 || !strings.Contains(r.stderr, "mounted at "+mnt) {
		t.Fatalf("ctr run with a mounted host disk: exit %d, stderr %q; want a refusal naming %s", r.code, r.stderr, mnt)
	}
	if qemuHolds(d.dev) {
		t.Errorf("a QEMU holds %s", d.dev)
	}
}
