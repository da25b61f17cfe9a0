package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The seccomp tests run the same containers under runc and under Berth and
// expect the same: the container's profile is in force inside the guest
// (Seccomp: 2 in /proc/self/status) and a syscall it blocks fails with
// EPERM.

const runcRuntime = "io.containerd.runc.v2"

// seccompProbe prints the seccomp mode and tries mkdir, which the
// blocking profile below denies.
const seccompProbe = `grep '^Seccomp:' /proc/self/status; mkdir /tmp/seccomp-probe 2>&1; echo mkdir=$?`

// writeBlockMkdirProfile writes an OCI seccomp profile that allows
// everything but mkdir/mkdirat (busybox's mkdir may use either), which fail
// with EPERM.
func writeBlockMkdirProfile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "block-mkdir.json")
	const profile = `{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
  "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
}`
	if err := os.WriteFile(p, []byte(profile), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// seccompLines normalises the whitespace of the probe's output (the
// Seccomp line has a tab).
func seccompLines(out string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}

// shortRuntime is "runc" or "berth" for a containerd runtime name.
func shortRuntime(rt string) string {
	return strings.TrimSuffix(strings.TrimPrefix(rt, "io.containerd."), ".v2")
}

func TestSeccompCtrProfilesApplyInTheGuestAsUnderRunc(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	profile := writeBlockMkdirProfile(t)
	cases := []struct {
		name  string
		flags []string
		want  string
	}{
		{"none", nil, "Seccomp: 0\nmkdir=0"},
		{"default", []string{"--seccomp"}, "Seccomp: 2\nmkdir=0"},
		{"block-mkdir", []string{"--seccomp", "--seccomp-profile", profile},
			"Seccomp: 2\nmkdir: can't create directory '/tmp/seccomp-probe': Operation not permitted\nmkdir=1"},
	}
	for _, c := range cases {
		for _, rt := range []string{runcRuntime, berthRuntime} {
			id := "seccomp-" + c.name + "-" + shortRuntime(rt)
			args := append([]string{"run", "--runtime", rt, "--rm"}, c.flags...)
			args = append(args, busyboxImage, id, "sh", "-c", seccompProbe)
			r := ctr(t, args...)
			if r.code != 0 {
				cleanupTask(t, id)
				t.Errorf("%s under %s: exit %d\n%s%s", c.name, rt, r.code, r.stdout, r.stderr)
				continue
			}
			if got := seccompLines(r.stdout); got != c.want {
				t.Errorf("%s under %s: output\n%s\nwant\n%s", c.name, rt, got, c.want)
			}
		}
	}
}

// A profile the agent cannot apply fails the container's creation, as
// under runc; it is never dropped.
func TestSeccompCtrInvalidProfileIsRefused(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	p := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(p, []byte(`{"defaultAction": "SCMP_ACT_NO_SUCH_ACTION"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, rt := range []string{runcRuntime, berthRuntime} {
		id := "seccomp-bad-" + shortRuntime(rt)
		r := ctr(t, "run", "--runtime", rt, "--rm", "--seccomp", "--seccomp-profile", p, busyboxImage, id, "true")
		cleanupTask(t, id)
		t.Logf("%s: exit %d: %s", rt, r.code, strings.TrimSpace(r.stderr))
		if r.code == 0 {
			t.Errorf("%s ran a container whose seccomp profile has an unknown action", rt)
		} else if rt == berthRuntime && !strings.Contains(r.stderr, "SCMP_ACT_NO_SUCH_ACTION") {
			t.Errorf("berth's error does not name the profile's problem:\n%s", r.stderr)
		}
	}
}

func TestSeccompCRIRuntimeDefaultAndLocalhostAsUnderRunc(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	profile := writeBlockMkdirProfile(t)
	for _, handler := range []string{"runc", criHandler} {
		pod := c.runPodWith(t, "seccomp-"+handler, handler, nil)
		func() {
			defer c.removePod(t, pod.id)
			withProfile := func(p *cri.SecurityProfile) func(*cri.ContainerConfig) {
				return func(cfg *cri.ContainerConfig) { cfg.Linux.SecurityContext.Seccomp = p }
			}
			defaultID, _ := c.createContainerWith(t, pod, "runtime-default",
				withProfile(&cri.SecurityProfile{ProfileType: cri.SecurityProfile_RuntimeDefault}), "sleep", "1000")
			localID, _ := c.createContainerWith(t, pod, "localhost",
				withProfile(&cri.SecurityProfile{ProfileType: cri.SecurityProfile_Localhost, LocalhostRef: profile}), "sleep", "1000")
			c.startContainer(t, defaultID)
			c.startContainer(t, localID)
			for _, probe := range []struct {
				id, want string
			}{
				{defaultID, "Seccomp: 2\nmkdir=0"},
				{localID, "Seccomp: 2\nmkdir: can't create directory '/tmp/seccomp-probe': Operation not permitted\nmkdir=1"},
			} {
				ex, err := c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: probe.id, Cmd: []string{"sh", "-c", seccompProbe}, Timeout: 30})
				if err != nil {
					t.Errorf("%s: ExecSync: %v", handler, err)
					continue
				}
				if got := seccompLines(string(ex.Stdout)); got != probe.want {
					t.Errorf("%s: exec in a container (exit %d) printed\n%s\nwant\n%s\nstderr %s", handler, ex.ExitCode, got, probe.want, ex.Stderr)
				}
			}
		}()
	}
}
