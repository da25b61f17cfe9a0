package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/sandbox"
)

const gib = 1 << 30

// createLimitedContainer creates a busybox container with a memory limit.
func (c *criClient) createLimitedContainer(t *testing.T, pod *criPod, name string, limitBytes int64, args ...string) string {
	t.Helper()
	config := &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: name},
		Image:    &cri.ImageSpec{Image: busyboxImage},
		Command:  args,
		LogPath:  name + ".log",
		Linux: &cri.LinuxContainerConfig{
			Resources:       &cri.LinuxContainerResources{MemoryLimitInBytes: limitBytes},
			SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: pod.config.Linux.SecurityContext.NamespaceOptions},
		},
	}
	resp, err := c.rt.CreateContainer(criCtx(t, 2*time.Minute), &cri.CreateContainerRequest{PodSandboxId: pod.id, Config: config, SandboxConfig: pod.config})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", name, err)
	}
	return resp.ContainerId
}

// guestMemTotalKiB runs head -1 /proc/meminfo in the container.
func (c *criClient) guestMemTotalKiB(t *testing.T, id string) int {
	t.Helper()
	ex, err := c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"head", "-1", "/proc/meminfo"}, Timeout: 30})
	if err != nil || ex.ExitCode != 0 {
		t.Fatalf("read meminfo: %v %+v", err, ex)
	}
	return memTotalKiB(t, string(ex.Stdout))
}

// berthStatus reads `berth status --json` for a sandbox.
func berthStatus(t *testing.T, id string) sandbox.Status {
	t.Helper()
	return berthStatusWith(t, env.config, id)
}

func berthStatusWith(t *testing.T, cfg, id string) sandbox.Status {
	t.Helper()
	r := berth(t, "", "--config", cfg, "status", "--json", id)
	if r.code != 0 {
		t.Fatalf("berth status %s: %s", id, r.stderr)
	}
	var st sandbox.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("berth status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// qemuRSSKiB reads VmRSS of the pod's QEMU.
func qemuRSSKiB(t *testing.T) int {
	t.Helper()
	pids := qemuPids()
	if len(pids) != 1 {
		t.Fatalf("QEMU pids %v", pids)
	}
	return procStatusField(t, pids[0], "VmRSS")
}

// procStatusField reads a number field of /proc/PID/status ("VmRSS" in
// KiB, "Threads").
func procStatusField(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

// TestMemoryFollowsContainerLimits is issue 4's main acceptance test,
// through CRI as the kubelet drives it: a 256 MiB sandbox with a 1 GiB
// container grows to hold it; an in-place resize up grows the guest, and
// down shrinks the guest and gives memory back to the host.
func TestMemoryFollowsContainerLimits(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "memory")
	defer c.removePod(t, pod.id)
	id := c.createLimitedContainer(t, pod, "limited", gib, "sleep", "1000")
	c.startContainer(t, id)

	if kib := c.guestMemTotalKiB(t, id); kib < 12*gib/10/1024 {
		t.Errorf("guest MemTotal %d KiB with a 1 GiB container in a 256 MiB sandbox, want >= 1.2 GiB", kib)
	}
	st := berthStatus(t, pod.id)
	if m := st.Memory; m.GuestAtBootMiB != 256 || m.GuestCurrentMiB != 1280 || m.GuestRequestedMiB != 1280 || m.Mechanism != "virtio-mem" {
		t.Errorf("berth status memory = %+v, want boot 256, current and requested 1280, virtio-mem", m)
	}

	// In-place resize up (KEP 1287): the guest must see the new memory.
	if _, err := c.rt.UpdateContainerResources(criCtx(t, 2*time.Minute), &cri.UpdateContainerResourcesRequest{
		ContainerId: id, Linux: &cri.LinuxContainerResources{MemoryLimitInBytes: 2 * gib},
	}); err != nil {
		t.Fatalf("UpdateContainerResources up: %v", err)
	}
	if kib := c.guestMemTotalKiB(t, id); kib < 22*gib/10/1024 {
		t.Errorf("after resize to 2 GiB, guest MemTotal %d KiB, want >= 2.2 GiB", kib)
	}
	// Touch 1.2 GiB in the guest so the host backs it, then free it.
	ex, err := c.rt.ExecSync(criCtx(t, 2*time.Minute), &cri.ExecSyncRequest{ContainerId: id,
		Cmd: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=1200M", "count=1"}, Timeout: 120})
	if err != nil || ex.ExitCode != 0 {
		t.Fatalf("touch memory: %v %s", err, ex.GetStderr())
	}
	rssBefore := qemuRSSKiB(t)
	totalBefore := c.guestMemTotalKiB(t, id)

	// Resize down: guest MemTotal and QEMU's RSS must both drop.
	if _, err := c.rt.UpdateContainerResources(criCtx(t, 2*time.Minute), &cri.UpdateContainerResourcesRequest{
		ContainerId: id, Linux: &cri.LinuxContainerResources{MemoryLimitInBytes: 256 << 20},
	}); err != nil {
		t.Fatalf("UpdateContainerResources down: %v", err)
	}
	totalAfter := c.guestMemTotalKiB(t, id)
	rssAfter := qemuRSSKiB(t)
	t.Logf("shrink 2 GiB -> 256 MiB limit: guest MemTotal %d -> %d KiB, QEMU RSS %d -> %d KiB", totalBefore, totalAfter, rssBefore, rssAfter)
	if totalAfter > totalBefore-1500*1024 {
		t.Errorf("guest MemTotal only went from %d to %d KiB", totalBefore, totalAfter)
	}
	if rssAfter > rssBefore-500*1024 {
		t.Errorf("QEMU RSS went from %d to %d KiB: shrinking did not return memory to the host", rssBefore, rssAfter)
	}
	if m := berthStatus(t, pod.id).Memory; m.GuestCurrentMiB != 512 || m.GuestRequestedMiB != 512 {
		t.Errorf("after shrink: %+v, want current and requested 512 MiB", m)
	}
}

// writeConfigVariant writes the test configuration plus extra TOML.
func writeConfigVariant(t *testing.T, extra string) string {
	t.Helper()
	base, err := os.ReadFile(env.config)
	if err != nil {
		t.Fatal(err)
	}
	p := t.TempDir() + "/config.toml"
	if err := os.WriteFile(p, append(base, []byte("\n"+extra)...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// berthRunBackground starts `berth run --name NAME ... sleep` and waits
// until its sandbox answers `berth status`.
func berthRunBackground(t *testing.T, name string) func() {
	t.Helper()
	return berthRunBackgroundWith(t, env.config, name)
}

func berthRunBackgroundWith(t *testing.T, cfg, name string) func() {
	t.Helper()
	args := []string{"--config", cfg, "run", "--name", name, "--rootfs", env.rootfs, "--", "sleep", "1000"}
	cmd := berthCmd(args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { interruptRun(cmd) }
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if r := berth(t, "", "--config", cfg, "status", name); r.code == 0 {
			return stop
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("sandbox %s never answered; berth run stderr:\n%s", name, stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// interruptRun stops a berth run as a user at a terminal would: SIGINT,
// then a second one, which SIGKILLs the container; SIGKILL for berth run
// itself if it has not exited 30 s later.
func interruptRun(cmd *exec.Cmd) {
	cmd.Process.Signal(os.Interrupt)
	time.Sleep(200 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt) // second signal: SIGKILL the container
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func TestMemoryInvalidResizeChangesNothing(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	stop := berthRunBackground(t, "mem-invalid")
	defer stop()
	before := berthStatus(t, "mem-invalid").Memory
	for _, tc := range []struct{ size, want string }{
		{"20000M", "default_maxmemory"}, // above maxGuest
		{"513M", "not aligned"},         // not a 2 MiB block
		{"128M", "booted with"},         // below boot memory
	} {
		// The host-MemAvailable check is unit-tested in internal/memory:
		// this host has more free memory than a sandbox's maximum.
		r := berth(t, "", "resize", "mem-invalid", "--memory", tc.size)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("resize to %s: exit %d, stderr %q; want a refusal mentioning %q", tc.size, r.code, r.stderr, tc.want)
		}
	}
	after := berthStatus(t, "mem-invalid").Memory
	if before.GuestCurrentMiB != after.GuestCurrentMiB || before.GuestRequestedMiB != after.GuestRequestedMiB || after.GuestCurrentMiB != 256 {
		t.Errorf("refused resizes changed the sandbox: before %+v, after %+v", before, after)
	}
}

// TestMemoryGrowToMaximum grows a 256 MiB guest to its 16 GiB ceiling in
// one request: more page structures than the boot memory can hold, so it
// only works because the grow is split and part is onlined as kernel
// memory.
func TestMemoryGrowToMaximum(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	stop := berthRunBackground(t, "mem-max")
	defer stop()
	r := berth(t, "", "resize", "mem-max", "--memory", "16384M")
	if r.code != 0 {
		t.Fatalf("grow to 16 GiB: %s", r.stderr)
	}
	st := berthStatus(t, "mem-max").Memory
	t.Logf("16 GiB: %+v", st)
	if st.GuestCurrentMiB != 16384 || st.GuestMemTotalMiB < 16000 {
		t.Errorf("after growing to the maximum: %+v", st)
	}
}

func TestMemoryGrow8GiBAtOnce(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	for _, mech := range []string{"virtio-mem", "dimm"} {
		t.Run(mech, func(t *testing.T) {
			cfg := writeConfigVariant(t, fmt.Sprintf("[hypervisor]\nmemory_hotplug = %q\n", mech))
			name := "mem-8g-" + mech
			stop := berthRunBackgroundWith(t, cfg, name)
			defer stop()
			start := time.Now()
			r := berth(t, "", "--config", cfg, "resize", name, "--memory", strconv.Itoa(256+8192)+"M")
			if r.code != 0 {
				t.Fatalf("grow by 8 GiB: %s", r.stderr)
			}
			st := berthStatusWith(t, cfg, name).Memory
			t.Logf("%s: +8 GiB took %v; guest MemTotal %d MiB", mech, time.Since(start), st.GuestMemTotalMiB)
			if st.GuestCurrentMiB != 256+8192 || st.GuestMemTotalMiB < 8192 {
				t.Errorf("after +8 GiB: %+v", st)
			}
			// Back down. Memory the guest had to online as kernel memory
			// (to hold the page structures of the rest) cannot leave
			// again: a partial shrink must say how far it got and leave
			// the sandbox consistent, with its container running.
			r = berth(t, "", "--config", cfg, "resize", name, "--memory", "256M")
			st = berthStatusWith(t, cfg, name).Memory
			t.Logf("%s: shrink to 256 MiB: exit %d %s; now %+v", mech, r.code, strings.TrimSpace(r.stderr), st)
			if r.code != 0 && !strings.Contains(r.stderr, "reached") {
				t.Errorf("a failed shrink must say how far it got: %s", r.stderr)
			}
			if st.GuestCurrentMiB != st.GuestRequestedMiB || st.GuestCurrentMiB >= 256+8192 {
				t.Errorf("after shrinking: %+v; want current == requested, and memory returned", st)
			}
		})
	}
}

// Memory a container touched and freed leaves QEMU: the guest reports the
// freed pages (virtio-balloon free page reporting) and QEMU discards them.
// Before the agent lowered the reporting order, ~100 MiB of the freed
// memory stayed with QEMU for good: the agent's own allocations while
// elastic memory sampled had split the guest's free memory into blocks
// below the 4 MiB the kernel reports.
func TestFreedGuestMemoryLeavesQEMU(t *testing.T) {
	requireE2E(t)
	defer assertNoLeaks(t)
	cmd, br, stderr := startRunWith(t, []string{"--memory", "1G"},
		`echo ready; sleep 8; echo touch; awk "BEGIN{s=sprintf(\"%320000000s\",\"\"); print length(s)}"; echo freed; sleep 1000`)
	defer interruptRun(cmd)
	// A VM that hangs is killed, which ends the reads below.
	hung := time.AfterFunc(3*time.Minute, func() { cmd.Process.Kill() })
	defer hung.Stop()
	waitLine := func(want string) {
		t.Helper()
		for {
			line, err := br.ReadString('\n')
			if strings.TrimSuffix(line, "\n") == want {
				return
			}
			if err != nil {
				t.Fatalf("berth run ended (or hung 3 min) before printing %q; stderr:\n%s", want, stderr.String())
			}
		}
	}
	waitLine("touch")
	idle := qemuRSSKiB(t) >> 10
	peak := idle
	waitLine("freed")
	freed := time.Now()
	for {
		rss := qemuRSSKiB(t) >> 10
		peak = max(peak, rss)
		if rss <= idle+32 {
			t.Logf("QEMU RSS idle %d MiB, peak %d MiB, %d MiB %v after the free", idle, peak, rss, time.Since(freed).Round(100*time.Millisecond))
			return
		}
		if time.Since(freed) > 20*time.Second {
			t.Fatalf("QEMU RSS %d MiB 20 s after the container freed ~410 MiB; idle before it %d MiB: want within 32 MiB of idle", rss, idle)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// criFixedMemoryHandler is the CRI runtime handler whose shims read
// env.configFixedMemory: memory.elastic = false.
const criFixedMemoryHandler = "berth-fixed-memory"

// TestCRIShrinkAfterADeleteSparesWhatTheGuestUses: with elastic memory
// off, a container without a limit may use memory that another
// container's limit grew the VM for. Deleting that other container shrinks
// the VM, but not below what the guest uses: the guest used to OOM-kill
// the first container's process (dd holding 700 MiB), or shrink until it
// had no memory left. The stop replies at once, the VM settles with
// memory to spare, and the process runs on.
func TestCRIShrinkAfterADeleteSparesWhatTheGuestUses(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPodWith(t, "shrink-held", criFixedMemoryHandler, nil)
	defer c.removePod(t, pod.id)
	big := c.createLimitedContainer(t, pod, "big", gib, "sleep", "1000")
	c.startContainer(t, big)
	// dd touches its 700 MiB buffer, then blocks writing it into a pipe
	// nobody reads: the memory stays in use.
	holder, _ := c.createContainer(t, pod, "holder", "sh", "-c", "dd if=/dev/zero bs=700M count=1 | sleep 1000")
	c.startContainer(t, holder)
	eventually(t, 2*time.Minute, "the holder touching 700 MiB", func() error {
		out := c.execOut(t, holder, "cat", "/proc/meminfo")
		total, avail := memInfoKiB(t, out, "MemTotal"), memInfoKiB(t, out, "MemAvailable")
		if total-avail < 700<<10 {
			return fmt.Errorf("guest MemTotal %d KiB, MemAvailable %d KiB", total, avail)
		}
		return nil
	})
	before := berthStatusWith(t, env.configFixedMemory, pod.id).Memory

	t0 := time.Now()
	if _, err := c.rt.StopContainer(criCtx(t, time.Minute), &cri.StopContainerRequest{ContainerId: big, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	t.Logf("StopContainer of the 1 GiB container took %v; memory before: current %d MiB", time.Since(t0).Round(time.Millisecond), before.GuestCurrentMiB)
	if _, err := c.rt.RemoveContainer(criCtx(t, time.Minute), &cri.RemoveContainerRequest{ContainerId: big}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	eventually(t, time.Minute, "the VM shrinking after the delete", func() error {
		m := berthStatusWith(t, env.configFixedMemory, pod.id).Memory
		if m.GuestCurrentMiB != m.GuestRequestedMiB || m.GuestCurrentMiB >= before.GuestCurrentMiB {
			return fmt.Errorf("memory now: current %d, requested %d MiB; before the stop %d MiB: want it smaller, and settled", m.GuestCurrentMiB, m.GuestRequestedMiB, before.GuestCurrentMiB)
		}
		return nil
	})
	m := berthStatusWith(t, env.configFixedMemory, pod.id).Memory
	ps := c.execOut(t, holder, "ps", "-o", "comm")
	t.Logf("after the shrink: current %d MiB, guest MemTotal %d MiB; holder's processes: %q", m.GuestCurrentMiB, m.GuestMemTotalMiB, ps)
	if !strings.Contains(ps, "dd") {
		t.Errorf("the holder's dd is gone: the shrink to %d MiB took the 700 MiB it used (guest log: OOM kill)", m.GuestCurrentMiB)
	}
	// What elastic memory keeps free (reserve, grow and keep margins,
	// 152 MiB) less slack for the guest's own accounting: a guest shrunk
	// to the last page OOM-kills at its next allocation.
	if avail := memInfoKiB(t, c.execOut(t, holder, "cat", "/proc/meminfo"), "MemAvailable") >> 10; avail < 100 {
		t.Errorf("after the shrink to %d MiB the guest has %d MiB available, want >= 100: the shrink took memory the guest uses", m.GuestCurrentMiB, avail)
	}
}
