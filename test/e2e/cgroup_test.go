package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/cgroup"
)

// The host cgroup tests check where a sandbox's VMM really runs: QEMU and
// virtiofsd in the sandbox's cgroup (<parent>/<id>; the tests' parent is
// env.cgroupParent) with the memory limit VM memory + overhead, and no such cgroup
// once the sandbox is gone, however it ended.

// Defaults of the test configuration (docs/configuration.md).
const (
	defaultVMMiB       = 256
	defaultOverheadMiB = 384
)

// virtiofsdPids finds the virtiofsd processes of this test run.
func virtiofsdPids() []int {
	return pidsMatching(func(c string) bool {
		argv0, _, _ := strings.Cut(c, "\x00")
		return strings.Contains(filepath.Base(argv0), "virtiofsd") && strings.Contains(c, env.runDir)
	})
}

// memoryCgroupOf returns pid's cgroup in the hierarchy that holds memory
// limits on this host (v1's memory controller, or the unified one).
func memoryCgroupOf(t *testing.T, pid int) string {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatalf("cgroup of %d: %v", pid, err)
	}
	defer f.Close()
	host := hostCgroups(t)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if host.Layout == cgroup.LayoutV2 && parts[0] == "0" {
			return parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				return parts[2]
			}
		}
	}
	t.Fatalf("pid %d has no memory cgroup", pid)
	return ""
}

func hostCgroups(t *testing.T) cgroup.Host {
	t.Helper()
	h, err := cgroup.Detect()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// memoryCgroupDir is the directory of cgroup path p in the memory
// hierarchy, and the name of its limit file there.
func memoryCgroupDir(t *testing.T, p string) (dir, limitFile string) {
	h := hostCgroups(t)
	if h.Layout == cgroup.LayoutV2 {
		return filepath.Join(h.V2Mount, p), "memory.max"
	}
	return filepath.Join(h.V1Mounts["memory"], p), "memory.limit_in_bytes"
}

// assertVMMInCgroup checks that every QEMU and virtiofsd of the run is in
// cgroup want, whose memory limit is limitBytes, and returns its directory.
func assertVMMInCgroup(t *testing.T, want string, limitBytes int64) string {
	t.Helper()
	q, v := qemuPids(), virtiofsdPids()
	if len(q) != 1 || len(v) == 0 {
		t.Fatalf("QEMU pids %v, virtiofsd pids %v: want one QEMU and its virtiofsd", q, v)
	}
	for _, pid := range append(q, v...) {
		if got := memoryCgroupOf(t, pid); got != want {
			t.Errorf("pid %d is in cgroup %s, want %s", pid, got, want)
		}
	}
	// Every thread of QEMU (vCPUs, I/O) too: a v1 cgroup holds threads.
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(q[0]) + "/task/*")
	for _, task := range tasks {
		b, _ := os.ReadFile(filepath.Join(task, "cgroup"))
		if !strings.Contains(string(b), ":"+want+"\n") {
			t.Errorf("QEMU thread %s is not in %s:\n%s", filepath.Base(task), want, b)
		}
	}
	t.Logf("QEMU %v (%d threads) and virtiofsd %v in %s", q, len(tasks), v, want)
	dir, limitFile := memoryCgroupDir(t, want)
	b, err := os.ReadFile(filepath.Join(dir, limitFile))
	if err != nil {
		t.Fatalf("memory limit: %v", err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.FormatInt(limitBytes, 10) {
		t.Errorf("%s/%s = %s, want %d (VM memory + cgroup.overhead_memory)", dir, limitFile, got, limitBytes)
	}
	return dir
}

func waitGoneDir(t *testing.T, dir string, limit time.Duration) {
	t.Helper()
	eventually(t, limit, "cgroup "+dir+" removed after the sandbox ended", func() error {
		_, err := os.Stat(dir)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("%s still exists", dir)
	})
}

const defaultLimitBytes = int64(defaultVMMiB+defaultOverheadMiB) << 20

func TestCgroupHoldsVMMUntilTaskDeleted(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "cg-delete"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	dir := assertVMMInCgroup(t, env.cgroupParent+"/"+id, defaultLimitBytes)
	mustCtr(t, "task", "kill", "-s", "KILL", id)
	waitStatus(t, id, "STOPPED", 10*time.Second)
	mustCtr(t, "task", "delete", id)
	waitGoneDir(t, dir, 10*time.Second)
	mustCtr(t, "container", "rm", id)
}

func TestCgroupRemovedAfterQEMUKilled(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "cg-qemu-killed"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	dir := assertVMMInCgroup(t, env.cgroupParent+"/"+id, defaultLimitBytes)
	syscall.Kill(qemuPids()[0], syscall.SIGKILL)
	waitStatus(t, id, "STOPPED", 10*time.Second)
	// Gone with QEMU, before anyone deletes the task.
	waitGoneDir(t, dir, 10*time.Second)
	mustCtr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// TestCgroupRemovedAfterShimKilled: the shim dies with SIGKILL, so only
// containerd's `shim delete` (a fresh process reading cgroup.json in the
// sandbox directory) can remove the cgroup.
func TestCgroupRemovedAfterShimKilled(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "cg-shim-killed"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	dir := assertVMMInCgroup(t, env.cgroupParent+"/"+id, defaultLimitBytes)
	shims := shimPids()
	if len(shims) != 1 {
		t.Fatalf("shim pids %v", shims)
	}
	syscall.Kill(shims[0], syscall.SIGKILL)
	waitGoneDir(t, dir, 20*time.Second)
	ctr(t, "task", "delete", id)
	mustCtr(t, "container", "rm", id)
}

// ctrMetrics parses `ctr task metrics` (a METRIC VALUE table for cgroup v2
// metrics) into numbers.
func ctrMetrics(t *testing.T, id string) map[string]uint64 {
	t.Helper()
	out := mustCtr(t, "task", "metrics", id)
	m := map[string]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	for _, k := range []string{"memory.usage", "cpu.usage_usec", "pids.current"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("ctr task metrics lacks %s:\n%s", k, out)
		}
	}
	return m
}

// TestCtrMetricsFollowTheWorkload: the figures `ctr task metrics` prints
// for a Berth task are live: memory, CPU and pids grow when a process
// starts that puts 50 MB in the container's /dev/shm (a tmpfs charged to
// its cgroup; fast and deterministic even on a loaded TCG host, unlike a
// shell building a big string) and burns CPU.
func TestCtrMetricsFollowTheWorkload(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "ctr-metrics-move"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	// `ctr run -d` returns while libcontainer's init processes may still
	// be in the container's cgroup: take the baseline once only the
	// container's own process is left.
	before := ctrMetrics(t, id)
	for deadline := time.Now().Add(30 * time.Second); before["pids.current"] != 1 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		before = ctrMetrics(t, id)
	}
	mustCtr(t, "task", "exec", "--detach", "--exec-id", "load", id, "sh", "-c",
		`dd if=/dev/zero of=/dev/shm/fill bs=1M count=50 2>/dev/null; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000`)
	var after map[string]uint64
	deadline := time.Now().Add(90 * time.Second)
	for {
		after = ctrMetrics(t, id)
		if after["memory.usage"] > before["memory.usage"]+40<<20 && after["pids.current"] > before["pids.current"] &&
			after["cpu.usage_usec"] > before["cpu.usage_usec"]+100000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not follow the workload within 90s: before %v, after %v", before, after)
		}
		time.Sleep(time.Second)
	}
	t.Logf("memory.usage %d -> %d, cpu.usage_usec %d -> %d, pids.current %d -> %d",
		before["memory.usage"], after["memory.usage"], before["cpu.usage_usec"], after["cpu.usage_usec"],
		before["pids.current"], after["pids.current"])
}

// TestSeed001CgroupMisconfigurationIsAnErrorNotACrash: seed 001's shim
// died with a nil resource controller ("ttrpc: closed") under one cgroup
// configuration. Here a configuration that cannot work on this host
// (the systemd driver, where systemd is not PID 1) is refused when the
// shim loads it: the container fails to start with an error naming
// cgroup.manager, no VM is started and the shim does not crash.
func TestSeed001CgroupMisconfigurationIsAnErrorNotACrash(t *testing.T) {
	containerd(t)
	if hostCgroups(t).Systemd {
		t.Skip("systemd is PID 1 here: the systemd driver is a valid choice")
	}
	defer assertNoLeaks(t)
	base, err := os.ReadFile(env.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "systemd.toml")
	body := strings.Replace(string(base), "[cgroup]\n", "[cgroup]\nmanager = \"systemd\"\n", 1)
	body = strings.Replace(body, "parent = \""+env.cgroupParent+"\"", "parent = \"berth.slice\"", 1)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	// A second private containerd whose shims read this configuration.
	dir := filepath.Join(t.TempDir(), "containerd")
	script := filepath.Join(repoRoot(), "scripts", "containerd-private.sh")
	start := exec.Command(script, "start", dir, filepath.Join(repoRoot(), "bin"))
	start.Env = append(os.Environ(), "BERTH_CONFIG="+cfg)
	out, err := start.Output()
	if err != nil {
		t.Fatalf("start containerd: %v: %s", err, exitStderr(err))
	}
	defer exec.Command(script, "stop", dir).Run()
	sock := strings.TrimSpace(string(out))
	// The main instance (started above) packed the image archive.
	archive := filepath.Join(ctrd.dir, "docker.io_library_busybox_berth.tar")
	if out, err := exec.Command(ctrBinary(), "-a", sock, "images", "import", archive).CombinedOutput(); err != nil {
		t.Fatalf("import: %v: %s", err, out)
	}
	r, _ := exec.Command(ctrBinary(), "-a", sock, "run", "--rm", "--runtime", berthRuntime, busyboxImage, "seed001", "true").CombinedOutput()
	msg := string(r)
	exec.Command(ctrBinary(), "-a", sock, "container", "rm", "seed001").Run()
	if !strings.Contains(msg, "cgroup.manager") || !strings.Contains(msg, "systemd") {
		t.Errorf("ctr run with the systemd driver on a host without systemd: want an error naming cgroup.manager, got:\n%s", msg)
	}
	if strings.Contains(msg, "ttrpc: closed") {
		t.Errorf("the shim crashed (seed 001):\n%s", msg)
	}
	if p := qemuPids(); len(p) > 0 {
		t.Errorf("a VM was started despite the rejected configuration: %v", p)
	}
	// The shim exits once its only task failed to be created.
	deadline := time.Now().Add(10 * time.Second)
	for len(pidsMatching(func(c string) bool {
		return strings.Contains(c, "containerd-shim-berth-v2") && strings.Contains(c, sock)
	})) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("the shim of the refused container is still running")
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("ctr run: %s", strings.TrimSpace(msg))
}

// TestCgroupLimitFollowsResize: the sandbox cgroup's memory limit moves
// with the VM's memory, up before a grow and down after a shrink
// (berth resize, the path the shim takes for container limits too).
func TestCgroupLimitFollowsResize(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	const name = "cg-resize"
	stop := berthRunBackground(t, name)
	defer stop()
	dir := assertVMMInCgroup(t, env.cgroupParent+"/"+name, defaultLimitBytes)
	_, limitFile := memoryCgroupDir(t, "/")
	limit := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, limitFile))
		return strings.TrimSpace(string(b))
	}
	for _, mib := range []int{1024, defaultVMMiB} {
		r := berth(t, "", "resize", name, "--memory", strconv.Itoa(mib)+"M")
		if r.code != 0 {
			t.Fatalf("resize to %d MiB: %s", mib, r.stderr)
		}
		want := strconv.FormatInt(int64(mib+defaultOverheadMiB)<<20, 10)
		if got := limit(); got != want {
			t.Errorf("after resize to %d MiB the cgroup limit is %s, want %s (VM + overhead)", mib, got, want)
		}
	}
	stop()
	waitGoneDir(t, dir, 10*time.Second)
}

// hostCPUQuota reads the CPU quota of cgroup path on the host: v1's
// cpu.cfs_quota_us, or v2's cpu.max.
func hostCPUQuota(t *testing.T, path string) string {
	t.Helper()
	h := hostCgroups(t)
	p := filepath.Join(h.V1Mounts["cpu"], path, "cpu.cfs_quota_us")
	if h.Layout == cgroup.LayoutV2 {
		p = filepath.Join(h.V2Mount, path, "cpu.max")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("cpu quota: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func quotaString(t *testing.T, usec int) string {
	if hostCgroups(t).Layout == cgroup.LayoutV2 {
		return strconv.Itoa(usec) + " 100000"
	}
	return strconv.Itoa(usec)
}

// TestCgroupCPUQuotaFollowsContainer: a container's CPU limit (here half
// a CPU, `ctr run --cpus 0.5`) is also the sandbox cgroup's quota on the
// host.
func TestCgroupCPUQuotaFollowsContainer(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	const id = "cg-cpu"
	mustCtr(t, "run", "-d", "--runtime", berthRuntime, "--cpus", "0.5", busyboxImage, id, "sleep", "1000")
	defer cleanupTask(t, id)
	if got, want := hostCPUQuota(t, env.cgroupParent+"/"+id), quotaString(t, 50000); got != want {
		t.Errorf("host cgroup CPU quota %q, want %q (0.5 CPU)", got, want)
	}
}

// TestCgroupCPUQuotaFollowsCRIUpdate: through CRI, the pod's host quota is
// its app container's, and UpdateContainerResources moves it.
func TestCgroupCPUQuotaFollowsCRIUpdate(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "cpu")
	defer c.removePod(t, pod.id)
	config := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: "cpu"},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  []string{"sleep", "1000"},
		LogPath:  "cpu.log",
		Linux: &cri.LinuxContainerConfig{
			Resources:       &cri.LinuxContainerResources{CpuQuota: 50000, CpuPeriod: 100000},
			SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: pod.config.Linux.SecurityContext.NamespaceOptions},
		},
	}
	resp, err := c.rt.CreateContainer(criCtx(t, 2*time.Minute), &cri.CreateContainerRequest{PodSandboxId: pod.id, Config: config, SandboxConfig: pod.config})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	c.startContainer(t, resp.ContainerId)
	// The pod's VM is the sandbox's cgroup below the pod cgroup.
	path := pod.config.Linux.CgroupParent + "/" + pod.id
	if got, want := hostCPUQuota(t, path), quotaString(t, 50000); got != want {
		t.Errorf("host cgroup CPU quota %q, want %q (0.5 CPU)", got, want)
	}
	if _, err := c.rt.UpdateContainerResources(criCtx(t, time.Minute), &cri.UpdateContainerResourcesRequest{
		ContainerId: resp.ContainerId, Linux: &cri.LinuxContainerResources{CpuQuota: 20000, CpuPeriod: 100000},
	}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	if got, want := hostCPUQuota(t, path), quotaString(t, 20000); got != want {
		t.Errorf("after the update the host cgroup CPU quota is %q, want %q (0.2 CPU)", got, want)
	}
}

// threadsCPUsAllowed maps every thread of the processes in the host
// cgroup at path (the memory hierarchy's) to its Cpus_allowed_list.
func threadsCPUsAllowed(t *testing.T, path string) map[string]string {
	t.Helper()
	procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", path, "cgroup.procs"))
	if err != nil {
		t.Fatalf("the VMM's cgroup: %v", err)
	}
	out := map[string]string{}
	for _, pid := range strings.Fields(string(procs)) {
		tasks, _ := filepath.Glob(filepath.Join("/proc", pid, "task", "*", "status"))
		for _, status := range tasks {
			b, err := os.ReadFile(status)
			if err != nil {
				continue // the thread ended
			}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
					out[status] = strings.TrimSpace(v)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no threads in the VMM's cgroup %s", path)
	}
	return out
}

// TestCgroupCPUSetPinsTheVMMWhereTheKubeletPinsTheContainer: the kubelet's
// static CPU manager pins a Guaranteed container to host CPUs. The guest's
// vCPUs are not those CPUs (the agent drops the cpuset inside), so the
// VM's threads on the host, QEMU's vCPU thread and virtiofsd included, run
// only there, and follow UpdateContainerResources.
func TestCgroupCPUSetPinsTheVMMWhereTheKubeletPinsTheContainer(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two host CPUs to pin to one of them")
	}
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "pinned")
	defer c.removePod(t, pod.id)
	id, _ := c.createContainerWith(t, pod, "pinned", func(cc *cri.ContainerConfig) {
		cc.Linux.Resources = &cri.LinuxContainerResources{CpuQuota: 100000, CpuPeriod: 100000, CpusetCpus: "1"}
	}, "sleep", "1000")
	c.startContainer(t, id)
	path := pod.config.Linux.CgroupParent + "/" + pod.id
	for thread, cpus := range threadsCPUsAllowed(t, path) {
		if cpus != "1" {
			t.Errorf("%s may run on CPUs %q, want 1 (the container's cpuset)", thread, cpus)
		}
	}
	all := fmt.Sprintf("0-%d", runtime.NumCPU()-1)
	if _, err := c.rt.UpdateContainerResources(criCtx(t, time.Minute), &cri.UpdateContainerResourcesRequest{
		ContainerId: id, Linux: &cri.LinuxContainerResources{CpuQuota: 100000, CpuPeriod: 100000, CpusetCpus: all},
	}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	for thread, cpus := range threadsCPUsAllowed(t, path) {
		if cpus != all {
			t.Errorf("after the update %s may run on CPUs %q, want %s", thread, cpus, all)
		}
	}
}
