// Package e2e holds Berth's end-to-end tests: they boot real QEMU guests
// with the real guest image and run real containers. They need root, the
// Debian packages from scripts/install-deps.sh and a built guest image, so
// they only run when BERTH_E2E=1 (`make test-e2e` sets it up).
//
// Every test ends by asserting that nothing of its sandboxes is left: no
// QEMU or virtiofsd process, no mount, no socket or directory under the
// run directory, no tap, ingress qdisc or pod veth.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

var env struct {
	berth    string // path of the berth binary
	stateDir string // holds the built guest image
	runDir   string // private run_dir of this test binary
	config   string // config file pointing at runDir
	// configSplit is config with cgroup.sandbox_cgroup_only = false.
	configSplit string
	// configFixedMemory is config with memory.elastic = false.
	configFixedMemory string
	rootfs            string // busybox root file system
	// cgroupParent is cgroup.parent of the test configuration: private to
	// this test binary, so that its leak check sees only its sandboxes.
	cgroupParent string
	skip         string // reason to skip, if the environment is not there
}

func TestMain(m *testing.M) {
	code := func() int {
		if os.Getenv("BERTH_E2E") != "1" {
			env.skip = "end-to-end tests boot VMs: set BERTH_E2E=1 (make test-e2e)"
			return m.Run()
		}
		if os.Geteuid() != 0 {
			env.skip = "end-to-end tests need root"
			return m.Run()
		}
		if err := setup(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e setup:", err)
			return 1
		}
		defer os.RemoveAll(filepath.Dir(env.runDir))
		defer removeCgroupParent()
		defer stopContainerd()
		before := sharedImageManifest()
		code := m.Run()
		if after := sharedImageManifest(); after != before {
			fmt.Fprintf(os.Stderr, "FAIL: the tests changed the shared guest image in %s/guest (manifest.json differs); a test must build its own image into a state directory of its own\n", env.stateDir)
			code = 1
		}
		return code
	}()
	os.Exit(code)
}

// sharedImageManifest is the shared guest image's manifest.json: the
// suite must leave the image it was given as it found it.
func sharedImageManifest() string {
	b, _ := os.ReadFile(filepath.Join(env.stateDir, "guest", "manifest.json"))
	return string(b)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func setup() error {
	root := repoRoot()
	env.berth = filepath.Join(root, "bin", "berth")
	if _, err := os.Stat(env.berth); err != nil {
		return fmt.Errorf("%s missing: run `make build`", env.berth)
	}
	env.stateDir = os.Getenv("BERTH_STATE_DIR")
	if env.stateDir == "" {
		env.stateDir = "/var/lib/berth"
	}
	// Every child (berth, containerd and so its shims) takes the state
	// directory from its configuration file, which names env.stateDir.
	// An inherited BERTH_STATE_DIR would override every configuration's
	// own state_dir: the evil guest's build then wrote the evil agent
	// over the shared image, and every later test, and whatever ran
	// after the suite, booted it.
	os.Unsetenv("BERTH_STATE_DIR")
	if _, err := os.Stat(filepath.Join(env.stateDir, "guest", "initramfs.img")); err != nil {
		return fmt.Errorf("guest image missing in %s: run `make guest`", env.stateDir)
	}
	tmp, err := os.MkdirTemp("", "berth-e2e-")
	if err != nil {
		return err
	}
	// Like /run: QEMU's unprivileged uid must traverse to its sandbox.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return err
	}
	env.runDir = filepath.Join(tmp, "run")
	if err := os.Mkdir(env.runDir, 0o711); err != nil {
		return err
	}
	env.config = filepath.Join(tmp, "config.toml")
	// Pods may size their VM (the stats tests need room for a 200 MB
	// page cache); nothing else is annotatable.
	env.cgroupParent = fmt.Sprintf("/berth-e2e-%d", os.Getpid())
	cfg := fmt.Sprintf("state_dir = %q\nrun_dir = %q\n[runtime]\nenable_annotations = [\"hypervisor.default_memory\"]\n",
		env.stateDir, env.runDir)
	// BERTH_E2E_KERNEL_SOURCE says which kernel the state directory's
	// guest image was built from (guest.kernel_source), so that `berth
	// check` judges the image against the configuration that built it.
	if ks := os.Getenv("BERTH_E2E_KERNEL_SOURCE"); ks != "" {
		cfg += fmt.Sprintf("[guest]\nkernel_source = %q\n", ks)
	}
	// [cgroup] last: the split variant below adds a key to it.
	cfg += fmt.Sprintf("[cgroup]\nparent = %q\n", env.cgroupParent)
	if err := os.WriteFile(env.config, []byte(cfg), 0o644); err != nil {
		return err
	}
	// The same with per-container host cgroups: containerd's runtime
	// handler "berth-split" passes it as the shim's ConfigPath.
	env.configSplit = filepath.Join(tmp, "config-split.toml")
	if err := os.WriteFile(env.configSplit, []byte(cfg+"sandbox_cgroup_only = false\n"), 0o644); err != nil {
		return err
	}
	// Without elastic memory: handler "berth-fixed-memory".
	env.configFixedMemory = filepath.Join(tmp, "config-fixed-memory.toml")
	if err := os.WriteFile(env.configFixedMemory, []byte(cfg+"[memory]\nelastic = false\n"), 0o644); err != nil {
		return err
	}
	env.rootfs = filepath.Join(tmp, "rootfs")
	return makeBusyboxRootfs(env.rootfs)
}

// makeBusyboxRootfs unpacks Debian's busybox-static into dir, one symlink
// per applet.
func makeBusyboxRootfs(dir string) error {
	out, err := exec.Command(filepath.Join(repoRoot(), "scripts", "busybox-rootfs.sh"), dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("busybox rootfs: %v: %s", err, out)
	}
	return nil
}

func requireE2E(t *testing.T) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
}

// result is what a berth command did.
type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

// berth runs the berth CLI with the test configuration.
func berth(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return runCommand(t, berthCmd(args...), stdin)
}

// runCommand runs cmd to completion and returns what it did; only a
// failure to run it at all fails the test.
func runCommand(t *testing.T, cmd *exec.Cmd, stdin string) result {
	t.Helper()
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	return r
}

func berthCmd(args ...string) *exec.Cmd {
	return exec.Command(env.berth, append([]string{"--config", env.config}, args...)...)
}

// assertNoLeaks fails the test if anything of a sandbox is left on the
// host. Teardown of a killed VM is asynchronous for a short moment, so it
// polls briefly before failing.
func assertNoLeaks(t *testing.T) {
	t.Helper()
	var problems []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		problems = leaks()
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(problems) > 0 {
		t.Errorf("leaked after the run:\n  %s", strings.Join(problems, "\n  "))
	}
}

func leaks() []string {
	var out []string
	// Processes whose command line names our run dir (QEMU's sockets and
	// virtiofsd's source are all inside it).
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmdline := strings.ReplaceAll(string(b), "\x00", " ")
		ours := strings.Contains(cmdline, env.runDir) && (strings.Contains(cmdline, "qemu") || strings.Contains(cmdline, "virtiofsd"))
		// A shim of our containerd must exit once its tasks are deleted.
		ours = ours || ctrd.sock != "" && strings.Contains(cmdline, "containerd-shim-berth-v2") && strings.Contains(cmdline, ctrd.sock)
		if ours {
			out = append(out, "process "+filepath.Base(filepath.Dir(p))+": "+cmdline)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], env.runDir) {
			out = append(out, "mount "+f[4])
		}
	}
	entries, _ := os.ReadDir(filepath.Join(env.runDir, "sandboxes"))
	for _, e := range entries {
		out = append(out, "sandbox dir "+e.Name())
	}
	// Sandbox cgroups: each is a directory below the parent in every
	// hierarchy; the memory one (or the unified one) stands for all. CRI
	// pods' cgroups are below their pod cgroups (podCgroupParents).
	for _, d := range append(cgroupParentDirs(), podCgroupDirs()...) {
		sub, _ := os.ReadDir(d)
		for _, e := range sub {
			if e.IsDir() {
				out = append(out, "cgroup "+filepath.Join(d, e.Name()))
			}
		}
	}
	// Taps, qdiscs and veths of pod networking (network_test.go).
	out = append(out, networkLeaks()...)
	return out
}

// cgroupParentDirs are the test's cgroup parent in every hierarchy where
// it exists.
func cgroupParentDirs() []string {
	var out []string
	mounts, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, m := range append(mounts, "/sys/fs/cgroup") {
		d := filepath.Join(m, env.cgroupParent)
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			out = append(out, d)
		}
	}
	return out
}

// removeCgroupParent removes the test's (by now empty) cgroup parent.
func removeCgroupParent() {
	for _, d := range cgroupParentDirs() {
		os.Remove(d)
	}
}

// pidsMatching lists the processes whose NUL-separated command line
// satisfies match.
func pidsMatching(match func(cmdline string) bool) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !match(string(b)) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// eventually retries check every 100 ms until it returns nil, and fails
// the test, naming what it waited for and check's last error, once limit
// has passed.
func eventually(t *testing.T, limit time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
