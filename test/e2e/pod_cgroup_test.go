package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/cgroup"
)

// The pod cgroup tests play the kubelet: they make the pod's cgroup
// (/kubepods/burstable/pod<uid>) as the kubelet's cgroupfs driver does,
// run a CRI pod with it as cgroup_parent, and check that the VM's cost is
// inside it, where the kubelet's eviction and containerd's PodSandboxStats
// look, and that nothing of the pod is left below it afterwards. The pod
// cgroup itself is the kubelet's and stays.

// criSplitHandler is the CRI runtime handler whose shims read
// env.configSplit (cgroup.sandbox_cgroup_only = false).
const criSplitHandler = "berth-split"

var podCgroups struct {
	sync.Mutex
	parents map[string]bool
}

// trackPodCgroup registers a CRI pod's cgroup_parent: the leak check
// reports any cgroup left below it, and at the end of the test it is
// removed with its ancestors once empty, as the kubelet would (rmdir
// removes only empty cgroups, so no one else's can go).
func trackPodCgroup(t *testing.T, parent string) {
	podCgroups.Lock()
	if podCgroups.parents == nil {
		podCgroups.parents = map[string]bool{}
	}
	podCgroups.parents[parent] = true
	podCgroups.Unlock()
	t.Cleanup(func() {
		podCgroups.Lock()
		delete(podCgroups.parents, parent)
		podCgroups.Unlock()
		for _, m := range cgroupMounts() {
			for p := parent; p != "/" && p != "."; p = filepath.Dir(p) {
				os.Remove(filepath.Join(m, p))
			}
		}
	})
}

// cgroupMounts are the roots of every cgroup hierarchy (v1 controllers,
// the unified one).
func cgroupMounts() []string {
	mounts, _ := filepath.Glob("/sys/fs/cgroup/*")
	return append(mounts, "/sys/fs/cgroup")
}

// podCgroupDirs are the tracked pod cgroups in every hierarchy.
func podCgroupDirs() []string {
	podCgroups.Lock()
	defer podCgroups.Unlock()
	var out []string
	for parent := range podCgroups.parents {
		for _, m := range cgroupMounts() {
			d := filepath.Join(m, parent)
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				out = append(out, d)
			}
		}
	}
	return out
}

// makeKubeletPodCgroup creates cgroup path p in every hierarchy with a
// memory limit, as the kubelet makes a pod's cgroup before
// RunPodSandbox.
func makeKubeletPodCgroup(t *testing.T, p string, memoryBytes int64) {
	t.Helper()
	for _, m := range cgroupMounts() {
		if _, err := os.Stat(filepath.Join(m, "cgroup.procs")); err != nil {
			continue // not a hierarchy (the tmpfs above them, a symlink)
		}
		if err := os.MkdirAll(filepath.Join(m, p), 0o755); err != nil {
			t.Fatalf("kubelet pod cgroup: %v", err)
		}
	}
	dir, limitFile := memoryCgroupDir(t, p)
	if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(strconv.FormatInt(memoryBytes, 10)), 0); err != nil {
		t.Fatalf("kubelet pod cgroup memory limit: %v", err)
	}
}

func readCgroupInt(t *testing.T, file string) int64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}

// TestPodCgroupHoldsTheVM: with a kubelet-style cgroup_parent, the pod's
// QEMU (every thread) and virtiofsd are inside the pod cgroup, in a
// cgroup limited to the VM's memory plus cgroup.overhead_memory; CRI's
// pod-level stats (crictl statsp) report the VM's real cost; after the
// pod is removed nothing is left below the pod cgroup, which stays.
//
//   - sandbox_cgroup_only = true (handler berth): the VM is the sandbox
//     container's own cgroup, <parent>/<sandbox id>; the app container has
//     no host cgroup.
//   - sandbox_cgroup_only = false (handler berth-split): the VM is in
//     <parent>/berth-<sandbox id>; each container's cgroup exists on the
//     host with its own limits and no process.
func TestPodCgroupHoldsTheVM(t *testing.T) {
	for _, tc := range []struct {
		name, handler string
		split         bool
	}{
		{"sandbox_cgroup_only", criHandler, false},
		{"per_container", criSplitHandler, true},
	} {
		t.Run(tc.name, func(t *testing.T) { podCgroupCase(t, tc.handler, tc.split) })
	}
}

func podCgroupCase(t *testing.T, handler string, split bool) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	uid := fmt.Sprintf("pc%d", time.Now().UnixNano())
	parent := "/kubepods/burstable/pod" + uid
	// The kubelet's pod limit: the containers' limits plus the
	// RuntimeClass overhead; generous here, it only has to hold the VM.
	makeKubeletPodCgroup(t, parent, 2<<30)
	pod := c.runPodIn(t, "podcg", handler, nil, parent)
	defer c.removePod(t, pod.id)

	const appMemory = 64 << 20
	config := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: "app"},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  []string{"sh", "-c", "echo ready; sleep 1000"},
		LogPath:  "app.log",
		Linux: &cri.LinuxContainerConfig{
			Resources:       &cri.LinuxContainerResources{CpuQuota: 50000, CpuPeriod: 100000, MemoryLimitInBytes: appMemory},
			SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: pod.config.Linux.SecurityContext.NamespaceOptions},
		},
	}
	resp, err := c.rt.CreateContainer(criCtx(t, 2*time.Minute), &cri.CreateContainerRequest{PodSandboxId: pod.id, Config: config, SandboxConfig: pod.config})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	app := resp.ContainerId
	c.startContainer(t, app)
	waitLogLine(t, filepath.Join(pod.logDir, "app.log"), "ready", 30*time.Second)

	vmm := parent + "/" + pod.id
	if split {
		vmm = parent + "/berth-" + pod.id
	}
	// The VM grew for the app container's limit; the cgroup follows it.
	vmMiB := berthStatus(t, pod.id).Memory.GuestCurrentMiB
	assertVMMInCgroup(t, vmm, int64(vmMiB+defaultOverheadMiB)<<20)
	if got, want := hostCPUQuota(t, vmm), quotaString(t, 50000); got != want {
		t.Errorf("VM cgroup CPU quota %q, want %q (the app container's 0.5 CPU)", got, want)
	}

	appDir, limitFile := memoryCgroupDir(t, parent+"/"+app)
	_, statErr := os.Stat(appDir)
	if split {
		if statErr != nil {
			t.Fatalf("sandbox_cgroup_only = false: the app container's host cgroup: %v", statErr)
		}
		if got := readCgroupInt(t, filepath.Join(appDir, limitFile)); got != appMemory {
			t.Errorf("app container's host cgroup memory limit %d, want %d", got, appMemory)
		}
		if got, want := hostCPUQuota(t, parent+"/"+app), quotaString(t, 50000); got != want {
			t.Errorf("app container's host cgroup CPU quota %q, want %q", got, want)
		}
		if b, _ := os.ReadFile(filepath.Join(appDir, "cgroup.procs")); len(strings.TrimSpace(string(b))) != 0 {
			t.Errorf("app container's host cgroup holds processes %q; it runs in the guest", b)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(appDir), pod.id)); err != nil {
			t.Errorf("the sandbox container's host cgroup: %v", err)
		}
	} else if statErr == nil {
		t.Errorf("sandbox_cgroup_only = true, yet the app container has a host cgroup %s", appDir)
	}

	// Pod-level stats, what `crictl statsp` and the kubelet read:
	// containerd reads the pod cgroup, which now holds the VM.
	var ps *cri.PodSandboxStats
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := c.rt.ListPodSandboxStats(criCtx(t, time.Minute), &cri.ListPodSandboxStatsRequest{Filter: &cri.PodSandboxStatsFilter{Id: pod.id}})
		if err == nil && len(list.Stats) == 1 {
			ps = list.Stats[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ListPodSandboxStats: %v, %d entries", err, len(list.GetStats()))
		}
		time.Sleep(time.Second)
	}
	mem, cpu := ps.GetLinux().GetMemory(), ps.GetLinux().GetCpu()
	t.Logf("pod stats: memory working set %d, usage %d; cpu %d ns; %d containers", mem.GetWorkingSetBytes().GetValue(),
		mem.GetUsageBytes().GetValue(), cpu.GetUsageCoreNanoSeconds().GetValue(), len(ps.GetLinux().GetContainers()))
	// A VM costs far more than the few MiB its container uses in the
	// guest: the figure is the host's view.
	if ws := mem.GetWorkingSetBytes().GetValue(); ws < 64<<20 {
		t.Errorf("pod working set %d bytes: want the VM's cost (> 64 MiB)", ws)
	}
	if cpu.GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Errorf("pod CPU usage is 0")
	}
	found := false
	for _, cs := range ps.GetLinux().GetContainers() {
		if cs.GetAttributes().GetId() == app {
			found = true
			if ws := cs.GetMemory().GetWorkingSetBytes().GetValue(); ws == 0 || ws >= mem.GetWorkingSetBytes().GetValue() {
				t.Errorf("app container working set %d: want the guest's figure, non-zero and below the pod's %d", ws, mem.GetWorkingSetBytes().GetValue())
			}
		}
	}
	if !found {
		t.Errorf("pod stats list no figures for the app container %s", app)
	}

	c.removePod(t, pod.id)
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, parent)
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				t.Errorf("after the pod was removed, %s is left in the pod cgroup", filepath.Join(d, e.Name()))
			}
		}
	}
	if dir, _ := memoryCgroupDir(t, parent); !exists(dir) {
		t.Errorf("the kubelet's pod cgroup %s was removed; it is not Berth's", dir)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// podFixedMemory is the RuntimeClass overhead.podFixed memory that
// docs/containerd.md publishes: default_memory + cgroup.overhead_memory
// (256 + 384 MiB), so that the kubelet's pod limit (the containers'
// limits + podFixed) is never below the VM cgroup's own (VM memory +
// overhead).
const podFixedMemory = int64(defaultVMMiB+defaultOverheadMiB) << 20

// TestPodFixedOverheadHoldsTheVM: a pod whose container uses nearly all
// of its 256 MiB limit runs inside a kubelet pod cgroup limited to that
// limit plus the published podFixed, and its measured host cost stays
// below it. The figures it logs are the ones docs/containerd.md quotes.
func TestPodFixedOverheadHoldsTheVM(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	const appLimit = 256 << 20
	parent := fmt.Sprintf("/kubepods/burstable/podfx%d", time.Now().UnixNano())
	makeKubeletPodCgroup(t, parent, appLimit+podFixedMemory)
	pod := c.runPodIn(t, "podfixed", criHandler, nil, parent)
	defer c.removePod(t, pod.id)
	dir, _ := memoryCgroupDir(t, parent)
	h := hostCgroups(t)
	cpuFile := filepath.Join(h.V1Mounts["cpuacct"], parent, "cpuacct.usage")
	if h.Layout == cgroup.LayoutV2 {
		cpuFile = ""
	}
	cpuNs := func() int64 {
		if cpuFile == "" {
			return 0
		}
		return readCgroupInt(t, cpuFile)
	}
	usageFile, peakFile := "memory.usage_in_bytes", "memory.max_usage_in_bytes"
	if h.Layout == cgroup.LayoutV2 {
		usageFile, peakFile = "memory.current", "memory.peak"
	}
	bootCPU := cpuNs()

	config := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: "app"},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  []string{"sh", "-c", "echo ready; sleep 1000"},
		LogPath:  "app.log",
		Linux: &cri.LinuxContainerConfig{
			Resources:       &cri.LinuxContainerResources{MemoryLimitInBytes: appLimit},
			SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: pod.config.Linux.SecurityContext.NamespaceOptions},
		},
	}
	resp, err := c.rt.CreateContainer(criCtx(t, 2*time.Minute), &cri.CreateContainerRequest{PodSandboxId: pod.id, Config: config, SandboxConfig: pod.config})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	app := resp.ContainerId
	c.startContainer(t, app)
	waitLogLine(t, filepath.Join(pod.logDir, "app.log"), "ready", 30*time.Second)
	time.Sleep(5 * time.Second)
	idle0, idleUsage := cpuNs(), readCgroupInt(t, filepath.Join(dir, usageFile))
	time.Sleep(10 * time.Second)
	idleCPU := (cpuNs() - idle0) / 10 / 1e6 // ms per s
	// dd's 240 MiB buffer is anonymous memory of the container, filled
	// from /dev/zero: the guest touches it, so the host pays for it.
	ex, err := c.rt.ExecSync(criCtx(t, 2*time.Minute), &cri.ExecSyncRequest{ContainerId: app,
		Cmd: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=240M", "count=2"}, Timeout: 110})
	if err != nil || ex.ExitCode != 0 {
		t.Fatalf("fill the container: %v %s %s", err, ex.GetStdout(), ex.GetStderr())
	}
	peak := readCgroupInt(t, filepath.Join(dir, peakFile))
	t.Logf("measured: boot %d ms CPU; idle %d MiB host memory, %d ms/s CPU; container at 240 of 256 MiB: pod peak %d MiB, %d MiB above the container limit (podFixed %d MiB)",
		bootCPU/1e6, idleUsage>>20, idleCPU, peak>>20, (peak-appLimit)>>20, podFixedMemory>>20)
	if peak >= appLimit+podFixedMemory {
		t.Errorf("pod peak %d MiB reached the kubelet's limit %d MiB (container limit + podFixed)", peak>>20, (appLimit+podFixedMemory)>>20)
	}
	st, err := c.rt.ContainerStatus(criCtx(t, time.Minute), &cri.ContainerStatusRequest{ContainerId: app})
	if err != nil || st.GetStatus().GetState() != cri.ContainerState_CONTAINER_RUNNING {
		t.Errorf("the container after the fill: %v %v (an OOM kill of the VM ends it)", st.GetStatus().GetState(), err)
	}
}

// TestPodCgroupRemovedAfterShimKilled: with per-container host cgroups
// (sandbox_cgroup_only = false), a shim killed with SIGKILL leaves nothing
// below the pod cgroup: containerd's `shim delete` removes the VM's and the
// containers' cgroups from the sandbox's cgroup.json.
func TestPodCgroupRemovedAfterShimKilled(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	parent := fmt.Sprintf("/kubepods/burstable/podsk%d", time.Now().UnixNano())
	makeKubeletPodCgroup(t, parent, 2<<30)
	pod := c.runPodIn(t, "shimkill", criSplitHandler, nil, parent)
	defer c.removePod(t, pod.id)
	app, _ := c.createContainer(t, pod, "app", "sleep", "1000")
	c.startContainer(t, app)
	dir, _ := memoryCgroupDir(t, parent)
	children := func() []string {
		entries, _ := os.ReadDir(dir)
		var out []string
		for _, e := range entries {
			if e.IsDir() {
				out = append(out, e.Name())
			}
		}
		return out
	}
	if got := children(); len(got) != 3 {
		t.Fatalf("pod cgroup children %v: want the VM's, the sandbox container's and the app container's", got)
	}
	shims := shimPids()
	if len(shims) != 1 {
		t.Fatalf("shim pids %v", shims)
	}
	syscall.Kill(shims[0], syscall.SIGKILL)
	eventually(t, 30*time.Second, "the pod cgroup emptied after the shim was killed", func() error {
		if got := children(); len(got) > 0 {
			return fmt.Errorf("the pod cgroup still holds %v", got)
		}
		return nil
	})
	if !exists(dir) {
		t.Errorf("the kubelet's pod cgroup %s was removed", dir)
	}
	// containerd learns of the exit through the dead shim's Wait; the
	// kubelet removes the pod only after that (it retries), and so does
	// this test.
	eventually(t, 30*time.Second, "CRI reports the app container EXITED after the shim was killed", func() error {
		st, err := c.rt.ContainerStatus(criCtx(t, time.Minute), &cri.ContainerStatusRequest{ContainerId: app})
		if err == nil && st.GetStatus().GetState() == cri.ContainerState_CONTAINER_EXITED {
			return nil
		}
		return fmt.Errorf("CRI still reports the app container %v (%v)", st.GetStatus().GetState(), err)
	})
}
