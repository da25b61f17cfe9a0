package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The CRI tests drive the private containerd's CRI plugin the way the
// kubelet does: RunPodSandbox with Berth's runtime handler, then app
// containers that join the pod's VM. Pods get their network from the
// private containerd's CNI configuration (bridge, host-local, portmap; see
// scripts/containerd-private.sh), as in a cluster.

const criHandler = "berth"

type criClient struct {
	rt  cri.RuntimeServiceClient
	img cri.ImageServiceClient
}

// newCRI connects to containerd's CRI plugin on the private socket.
func newCRI(t *testing.T) *criClient {
	t.Helper()
	sock := containerd(t)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial CRI: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &criClient{rt: cri.NewRuntimeServiceClient(conn), img: cri.NewImageServiceClient(conn)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.rt.Version(ctx, &cri.VersionRequest{}); err != nil {
		t.Fatalf("CRI Version: %v", err)
	}
	// The images were imported with ctr into k8s.io; CRI learns of them
	// from containerd's events, so give it a moment.
	for _, ref := range []string{busyboxImage, pauseImage} {
		eventually(t, 10*time.Second, "CRI knows image "+ref, func() error {
			st, err := c.img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: ref}})
			if err != nil {
				return fmt.Errorf("CRI does not know image %s: %v", ref, err)
			}
			if st.Image == nil {
				return fmt.Errorf("CRI does not know image %s: ImageStatus has no image", ref)
			}
			return nil
		})
	}
	return c
}

func criCtx(t *testing.T, limit time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	return ctx
}

// criPod is a running pod sandbox.
type criPod struct {
	id     string
	config *cri.PodSandboxConfig
	logDir string
	netns  string // the pod's network namespace on the host
}

// runPod starts a pod sandbox with Berth's handler. Callers defer
// removePod after assertNoLeaks, so that a failing test still removes its
// pod before the leak check.
func (c *criClient) runPod(t *testing.T, name string) *criPod {
	t.Helper()
	return c.runPodWith(t, name, criHandler, nil)
}

// runPodWith starts a pod sandbox with the given runtime handler ("berth"
// or "runc") and pod annotations.
func (c *criClient) runPodWith(t *testing.T, name, handler string, annotations map[string]string) *criPod {
	t.Helper()
	return c.runPodConfig(t, podConfig(t, name, annotations), handler)
}

// podConfig is what the kubelet sends for a pod on the pod network, with
// the pod's name as its hostname and a kubelet-style pod cgroup.
func podConfig(t *testing.T, name string, annotations map[string]string) *cri.PodSandboxConfig {
	uid := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	return podConfigIn(t, name, annotations, "/kubepods/besteffort/pod"+uid)
}

// runPodIn starts a pod whose CRI cgroup_parent is cgroupParent (the pod
// cgroup the kubelet would have made); the pod's host cgroups are below
// it, and the leak check looks there (trackPodCgroup).
func (c *criClient) runPodIn(t *testing.T, name, handler string, annotations map[string]string, cgroupParent string) *criPod {
	t.Helper()
	return c.runPodConfig(t, podConfigIn(t, name, annotations, cgroupParent), handler)
}

// podConfigIn is podConfig with the given CRI cgroup_parent.
func podConfigIn(t *testing.T, name string, annotations map[string]string, cgroupParent string) *cri.PodSandboxConfig {
	uid := strings.TrimPrefix(filepath.Base(cgroupParent), "pod")
	return &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Uid: uid, Namespace: "berth-e2e", Attempt: 0},
		Hostname:     name,
		LogDirectory: t.TempDir(),
		Labels:       map[string]string{"app": name},
		Annotations:  annotations,
		Linux: &cri.LinuxPodSandboxConfig{
			// What the kubelet passes with the cgroupfs driver; the guest
			// must not care.
			CgroupParent: cgroupParent,
			SecurityContext: &cri.LinuxSandboxSecurityContext{
				NamespaceOptions: &cri.NamespaceOption{
					Network: cri.NamespaceMode_POD,
					Pid:     cri.NamespaceMode_CONTAINER,
					Ipc:     cri.NamespaceMode_POD,
				},
			},
		},
	}
}

// runPodConfig starts a pod sandbox from config and records its network
// namespace for the leak check.
func (c *criClient) runPodConfig(t *testing.T, config *cri.PodSandboxConfig, handler string) *criPod {
	t.Helper()
	if config.Linux != nil && config.Linux.CgroupParent != "" {
		trackPodCgroup(t, config.Linux.CgroupParent)
	}
	resp, err := c.rt.RunPodSandbox(criCtx(t, 2*time.Minute), &cri.RunPodSandboxRequest{Config: config, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox (%s): %v\ncontainerd log:\n%s", handler, err, tail(filepath.Join(ctrd.dir, "containerd.log"), 20))
	}
	pod := &criPod{id: resp.PodSandboxId, config: config, logDir: config.LogDirectory}
	pod.netns = c.podNetNS(t, pod.id)
	return pod
}

// removePod stops and removes a pod and its containers; it is what the
// kubelet does on pod deletion, and it is idempotent.
func (c *criClient) removePod(t *testing.T, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: id}); err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("StopPodSandbox %s: %v", id, err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: id}); err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("RemovePodSandbox %s: %v", id, err)
	}
}

// createContainer creates (not starts) a busybox container in the pod, with
// a kubelet-style termination log mount.
func (c *criClient) createContainer(t *testing.T, pod *criPod, name string, args ...string) (id, termLog string) {
	t.Helper()
	return c.createContainerWith(t, pod, name, nil, args...)
}

// createContainerWith is createContainer with a hook that adjusts the
// container's config (security context, mounts) before it is sent.
func (c *criClient) createContainerWith(t *testing.T, pod *criPod, name string, adjust func(*cri.ContainerConfig), args ...string) (id, termLog string) {
	t.Helper()
	termLog = filepath.Join(t.TempDir(), "termination-log")
	if err := os.WriteFile(termLog, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	config := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: name},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  args,
		LogPath:  name + ".log",
		Mounts:   []*cri.Mount{{ContainerPath: "/dev/termination-log", HostPath: termLog}},
		Linux: &cri.LinuxContainerConfig{
			SecurityContext: &cri.LinuxContainerSecurityContext{
				NamespaceOptions: pod.config.Linux.SecurityContext.NamespaceOptions,
			},
		},
	}
	if adjust != nil {
		adjust(config)
	}
	resp, err := c.rt.CreateContainer(criCtx(t, time.Minute), &cri.CreateContainerRequest{
		PodSandboxId: pod.id, Config: config, SandboxConfig: pod.config,
	})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", name, err)
	}
	return resp.ContainerId, termLog
}

func (c *criClient) startContainer(t *testing.T, id string) {
	t.Helper()
	if _, err := c.rt.StartContainer(criCtx(t, time.Minute), &cri.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
}

// stdoutLines returns the content of a CRI log file's ("<time> <stream>
// <tag> <line>") full stdout lines, and the file as read.
func stdoutLines(path string) ([]string, []byte) {
	b, _ := os.ReadFile(path)
	var lines []string
	for sc := bufio.NewScanner(strings.NewReader(string(b))); sc.Scan(); {
		if f := strings.SplitN(sc.Text(), " ", 4); len(f) == 4 && f[1] == "stdout" && f[2] == "F" {
			lines = append(lines, f[3])
		}
	}
	return lines, b
}

// waitLogLine waits for a stdout line of a CRI log file that has the
// given suffix and returns the line's content.
func waitLogLine(t *testing.T, path, suffix string, limit time.Duration) string {
	t.Helper()
	var line string
	eventually(t, limit, fmt.Sprintf("a stdout line ending in %q in %s", suffix, path), func() error {
		lines, b := stdoutLines(path)
		for _, l := range lines {
			if strings.HasSuffix(l, suffix) {
				line = l
				return nil
			}
		}
		return fmt.Errorf("no such line; log:\n%s", b)
	})
	return line
}

func TestCRIPodWithTwoContainersSharesOneVM(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	start := time.Now()
	pod := c.runPod(t, "two-containers")
	defer c.removePod(t, pod.id)
	t.Logf("RunPodSandbox took %v", time.Since(start))

	script := func(name string) []string {
		return []string{"sh", "-c", fmt.Sprintf("echo $(cat /proc/sys/kernel/random/boot_id) %s; echo %s-was-here > /dev/termination-log; sleep 1000", name, name)}
	}
	id1, term1 := c.createContainer(t, pod, "c1", script("c1")...)
	id2, _ := c.createContainer(t, pod, "c2", script("c2")...)
	c.startContainer(t, id1)
	c.startContainer(t, id2)

	if pids := qemuPids(); len(pids) != 1 {
		t.Fatalf("QEMU pids %v for one pod with two containers, want exactly one", pids)
	}
	if s := shimPids(); len(s) != 1 {
		t.Errorf("shim pids %v for one pod, want one", s)
	}

	line1 := waitLogLine(t, filepath.Join(pod.logDir, "c1.log"), " c1", 30*time.Second)
	line2 := waitLogLine(t, filepath.Join(pod.logDir, "c2.log"), " c2", 30*time.Second)
	boot1, boot2 := strings.Fields(line1)[0], strings.Fields(line2)[0]
	if boot1 != boot2 {
		t.Errorf("containers of one pod see different kernels: boot ids %s and %s", boot1, boot2)
	}
	hostBoot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if boot1 == strings.TrimSpace(string(hostBoot)) {
		t.Errorf("container boot id %s is the host's: the container is not in a VM", boot1)
	}

	// The kubelet's termination log is a host file bound into the
	// container: what the container writes must reach the host.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(term1)
		if strings.TrimSpace(string(b)) == "c1-was-here" {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("termination log on the host holds %q, want c1-was-here", b)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	ex, err := c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id2, Cmd: []string{"uname", "-r"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync uname: %v", err)
	}
	if release := strings.TrimSpace(string(ex.Stdout)); ex.ExitCode != 0 || release != guestRelease(t) || release == hostRelease() {
		t.Errorf("ExecSync uname -r: exit %d, stdout %q, stderr %q; want 0 and the guest kernel (host is %s)", ex.ExitCode, ex.Stdout, ex.Stderr, hostRelease())
	}
	ex, err = c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id2, Cmd: []string{"sh", "-c", "exit 3"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync exit 3: %v", err)
	}
	if ex.ExitCode != 3 {
		t.Errorf("ExecSync sh -c 'exit 3': exit code %d, want 3", ex.ExitCode)
	}

	// Containers of a pod share its /dev/shm (POSIX shared memory), as
	// under runc: what c1 writes there, c2 reads.
	if ex, err = c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id1, Cmd: []string{"sh", "-c", "echo pod-shm > /dev/shm/probe"}, Timeout: 30}); err != nil || ex.ExitCode != 0 {
		t.Fatalf("write /dev/shm in c1: %v %+v", err, ex)
	}
	ex, err = c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id2, Cmd: []string{"cat", "/dev/shm/probe"}, Timeout: 30})
	if err != nil || strings.TrimSpace(string(ex.Stdout)) != "pod-shm" {
		t.Errorf("c2 does not see c1's /dev/shm: %v, stdout %q stderr %q", err, ex.GetStdout(), ex.GetStderr())
	}

	for _, id := range []string{id1, id2} {
		st, err := c.rt.ContainerStatus(criCtx(t, time.Minute), &cri.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("ContainerStatus %s: %v", id, err)
		}
		if st.Status.State != cri.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container %s (%s) is %v, want RUNNING", st.Status.Metadata.GetName(), id, st.Status.State)
		}
	}

	for _, id := range []string{id1, id2} {
		if _, err := c.rt.StopContainer(criCtx(t, time.Minute), &cri.StopContainerRequest{ContainerId: id, Timeout: 2}); err != nil {
			t.Fatalf("StopContainer %s: %v", id, err)
		}
		st, err := c.rt.ContainerStatus(criCtx(t, time.Minute), &cri.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("ContainerStatus %s: %v", id, err)
		}
		if st.Status.State != cri.ContainerState_CONTAINER_EXITED {
			t.Errorf("container %s is %v after StopContainer, want EXITED", id, st.Status.State)
		}
		if _, err := c.rt.RemoveContainer(criCtx(t, time.Minute), &cri.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("RemoveContainer %s: %v", id, err)
		}
	}
	// The pod's VM outlives its app containers: it belongs to the sandbox.
	if pids := qemuPids(); len(pids) != 1 {
		t.Errorf("QEMU pids %v after the app containers were removed, want the pod's one", pids)
	}
	if _, err := c.rt.StopPodSandbox(criCtx(t, time.Minute), &cri.StopPodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := c.rt.RemovePodSandbox(criCtx(t, time.Minute), &cri.RemovePodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for (len(qemuPids()) > 0 || len(shimPids()) > 0) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if p := qemuPids(); len(p) > 0 {
		t.Errorf("QEMU %v still running after RemovePodSandbox", p)
	}
	if p := shimPids(); len(p) > 0 {
		t.Errorf("shim %v still running after RemovePodSandbox", p)
	}
}

func TestCRIContainerStats(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "stats")
	defer c.removePod(t, pod.id)
	// The shell holds a 1 MiB string: anonymous memory the working set
	// must count, whatever the guest's file-page statistics say. A
	// container of only a shell and sleep holds ~300 KiB, and once (CI,
	// stop 24) memory.stat's inactive_file covered all of memory.current:
	// a working set of 0. (Not explained; lazily updated memory.stat
	// counters are the likely cause.) The last echo keeps the shell, and
	// the string, from being replaced by an exec of sleep.
	id, _ := c.createContainer(t, pod, "stats", "sh", "-c", "x=$(head -c 1048576 /dev/zero | tr '\\0' x); echo ready ${#x}; sleep 1000; echo ${#x}")
	c.startContainer(t, id)
	waitLogLine(t, filepath.Join(pod.logDir, "stats.log"), "ready 1048576", 30*time.Second)

	resp, err := c.rt.ContainerStats(criCtx(t, time.Minute), &cri.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStats: %v", err)
	}
	st := resp.Stats
	if st == nil || st.Attributes.GetId() != id {
		t.Fatalf("ContainerStats for %s returned %+v", id, st)
	}
	t.Logf("memory %+v, cpu %+v", st.Memory, st.Cpu)
	mem := st.Memory
	if mem == nil || mem.WorkingSetBytes == nil || mem.WorkingSetBytes.Value < 1<<20 {
		t.Errorf("memory working set missing or below the 1 MiB the container holds: %+v", mem)
	} else if mem.UsageBytes == nil || mem.UsageBytes.Value < mem.WorkingSetBytes.Value {
		t.Errorf("memory usage %v below the working set %d", mem.UsageBytes, mem.WorkingSetBytes.Value)
	}
	if st.Cpu == nil || st.Cpu.UsageCoreNanoSeconds == nil || st.Cpu.UsageCoreNanoSeconds.Value == 0 {
		t.Errorf("cpu usage core nanoseconds missing or zero: %+v", st.Cpu)
	}

	// ListContainerStats sees the same container.
	list, err := c.rt.ListContainerStats(criCtx(t, time.Minute), &cri.ListContainerStatsRequest{
		Filter: &cri.ContainerStatsFilter{PodSandboxId: pod.id},
	})
	if err != nil {
		t.Fatalf("ListContainerStats: %v", err)
	}
	if len(list.Stats) != 1 || list.Stats[0].Attributes.GetId() != id {
		t.Errorf("ListContainerStats for the pod: %d entries, want the one container %s", len(list.Stats), id)
	}
}

// tail returns the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestCRICrashedContainerRestartsInTheSameVM: the kubelet restarts a
// container that crashed (restartPolicy Always, CrashLoopBackOff) by
// creating the next attempt in the same pod sandbox while the dead one's
// record is kept for its status. The new attempt runs in the pod's VM,
// and the dead one still reports its exit code.
func TestCRICrashedContainerRestartsInTheSameVM(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "restart")
	defer c.removePod(t, pod.id)
	const probe = "echo vm $(cat /proc/sys/kernel/random/boot_id)"
	attempt := func(n uint32, exit string) string {
		id, _ := c.createContainerWith(t, pod, fmt.Sprintf("app-%d", n), func(cc *cri.ContainerConfig) {
			cc.Metadata = &cri.ContainerMetadata{Name: "app", Attempt: n}
		}, "sh", "-c", probe+"; "+exit)
		c.startContainer(t, id)
		return id
	}
	first := attempt(0, "exit 3")
	st := c.waitExited(t, first, time.Minute)
	if st.ExitCode != 3 {
		t.Errorf("the crashed attempt exited %d, want 3", st.ExitCode)
	}
	second := attempt(1, "exec sleep 1000")
	vm0 := waitLogLine(t, filepath.Join(pod.logDir, "app-0.log"), "", time.Minute)
	vm1 := waitLogLine(t, filepath.Join(pod.logDir, "app-1.log"), "", time.Minute)
	if vm0 != vm1 || !strings.HasPrefix(vm1, "vm ") {
		t.Errorf("the restarted attempt ran in another VM: %q, then %q", vm0, vm1)
	}
	if st := c.waitExited(t, first, time.Second); st.ExitCode != 3 {
		t.Errorf("the crashed attempt's status after the restart: exit %d, want 3", st.ExitCode)
	}
	s2, err := c.rt.ContainerStatus(criCtx(t, time.Minute), &cri.ContainerStatusRequest{ContainerId: second})
	if err != nil || s2.Status.State != cri.ContainerState_CONTAINER_RUNNING || s2.Status.Metadata.GetAttempt() != 1 {
		t.Errorf("the restarted attempt: %v %+v, want RUNNING, attempt 1", err, s2.GetStatus())
	}
	if pids := qemuPids(); len(pids) != 1 {
		t.Errorf("QEMU pids %v, want the pod's one", pids)
	}
}

// TestCRIContainerInThePodsPidNamespaceEndsWithItsInit: a container that
// shares the pod's pid namespace (shareProcessNamespace: true) ends when
// its init ends, whatever its init left running, as under runc (whose
// shim kills the rest of the cgroup then): the init exiting on its own
// leaves a background child that would hold stdout open, and StopContainer
// with no grace SIGKILLs an init whose child ignores SIGTERM. Berth used
// to signal only the init, so the child kept the container RUNNING and
// the pod could not be removed (StopPodSandbox timed out waiting for the
// kill, the VM stayed).
func TestCRIContainerInThePodsPidNamespaceEndsWithItsInit(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	for _, handler := range []string{"runc", criHandler} {
		t.Run(handler, func(t *testing.T) {
			config := podConfig(t, "pidns-"+handler, nil)
			config.Linux.SecurityContext.NamespaceOptions.Pid = cri.NamespaceMode_POD
			pod := c.runPodConfig(t, config, handler)
			defer c.removePod(t, pod.id)

			exits, _ := c.createContainer(t, pod, "exits", "sh", "-c", "sleep 100000 & echo started; exit 7")
			c.startContainer(t, exits)
			if st := c.waitExited(t, exits, time.Minute); st.ExitCode != 7 {
				t.Errorf("the init that exited on its own: exit %d, want 7", st.ExitCode)
			}

			stubborn, _ := c.createContainer(t, pod, "stubborn", "sh", "-c", `trap "" TERM; sleep 100000 & echo started; wait; sleep 100000`)
			c.startContainer(t, stubborn)
			waitLogLine(t, filepath.Join(pod.logDir, "stubborn.log"), "started", time.Minute)
			if _, err := c.rt.StopContainer(criCtx(t, time.Minute), &cri.StopContainerRequest{ContainerId: stubborn, Timeout: 0}); err != nil {
				t.Fatalf("StopContainer with no grace: %v", err)
			}
			if st := c.waitExited(t, stubborn, 10*time.Second); st.ExitCode != 137 {
				t.Errorf("the SIGKILLed init: exit %d, want 137", st.ExitCode)
			}
			ctx := criCtx(t, time.Minute)
			if _, err := c.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: pod.id}); err != nil {
				t.Errorf("StopPodSandbox: %v", err)
			}
		})
	}
}
