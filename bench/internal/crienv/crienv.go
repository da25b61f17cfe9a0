// Package crienv is the CRI set-up the benchmarks share: a private
// containerd (scripts/containerd-private.sh) with Berth and runc handlers,
// the busybox and pause images packed from a root file system, and pods
// whose cgroups sit below /berth-bench as a kubelet's would.
package crienv

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/guest"
	"github.com/berth-runtime/berth/internal/ociimage"
)

// Images the benchmarks' pods run.
const (
	BusyboxImage = "docker.io/library/busybox:berth-bench"
	PauseImage   = "docker.io/library/berth-pause:latest"
)

// Env is a running private containerd and a CRI client for it.
type Env struct {
	// Dir is the benchmark's temporary directory; Close removes it.
	Dir string
	// RunDir is Berth's run_dir for the benchmark's sandboxes.
	RunDir string
	RT     cri.RuntimeServiceClient
	stop   func()
}

// Paths are the flags every CRI benchmark takes: where Berth's guest
// image, the busybox root file system and Berth's binaries are. A struct
// rather than three strings in a row, which a call can shift unnoticed.
type Paths struct {
	StateDir string
	Rootfs   string
	Bin      string
	// Config, if set, is a Berth configuration file whose settings the
	// shims use, below the state_dir and run_dir Start sets.
	Config string
}

// Flags registers -state-dir, -rootfs and -bin on the command line.
func (p *Paths) Flags() {
	flag.StringVar(&p.StateDir, "state-dir", "/var/lib/berth", "Berth state directory holding the guest image")
	flag.StringVar(&p.Rootfs, "rootfs", "bin/rootfs-busybox", "busybox root file system for the containers (make rootfs)")
	flag.StringVar(&p.Bin, "bin", "bin", "directory holding containerd-shim-berth-v2")
	flag.StringVar(&p.Config, "config", "", "Berth configuration file for the shims (state_dir and run_dir are set by the benchmark)")
}

// Main runs a benchmark with a context that SIGINT and SIGTERM cancel (so
// its deferred clean-up runs) and exits 1 with the error, if any.
func Main(run func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Start starts containerd with Berth's binaries in p.Bin (the repository's
// bin/), a configuration whose state_dir is p.StateDir, and the images
// packed from p.Rootfs (a busybox root file system, as `make rootfs`
// unpacks); everything lives below a new temporary directory named for the
// benchmark, which Close removes.
func Start(ctx context.Context, name string, p Paths) (*Env, error) {
	stateDir, rootfs := p.StateDir, p.Rootfs
	if _, err := os.Stat(filepath.Join(rootfs, "bin", "busybox")); err != nil {
		return nil, fmt.Errorf("-rootfs %s: %w (make rootfs)", rootfs, err)
	}
	bin, err := filepath.Abs(p.Bin)
	if err != nil {
		return nil, err
	}
	if err := guest.CheckAgent(filepath.Join(stateDir, "guest"), filepath.Join(bin, "berth-agent")); err != nil {
		return nil, fmt.Errorf("-state-dir %s: %w", stateDir, err)
	}
	tmp, err := os.MkdirTemp("", "berth-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	// QEMU runs as an unprivileged uid and must reach run_dir below it.
	if err := os.Chmod(tmp, 0o711); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	var base []byte
	if p.Config != "" {
		if base, err = os.ReadFile(p.Config); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("-config: %w", err)
		}
	}
	e, err := start(ctx, bin, stateDir, rootfs, tmp, base)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return e, nil
}

func start(ctx context.Context, bin, stateDir, rootfs, tmp string, base []byte) (*Env, error) {
	e := &Env{Dir: tmp, RunDir: filepath.Join(tmp, "run")}
	cfg := filepath.Join(tmp, "config.toml")
	// Top-level keys first: TOML puts any key after a [table] header
	// into that table.
	text := append([]byte(fmt.Sprintf("state_dir = %q\nrun_dir = %q\n", stateDir, e.RunDir)), base...)
	if err := os.WriteFile(cfg, text, 0o644); err != nil {
		return nil, err
	}
	script := filepath.Join(filepath.Dir(bin), "scripts", "containerd-private.sh")
	ctrdDir := filepath.Join(tmp, "containerd")
	start := exec.Command(script, "start", ctrdDir, bin)
	start.Env = append(os.Environ(), "BERTH_CONFIG="+cfg)
	start.Stderr = os.Stderr
	out, err := start.Output()
	if err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	stopContainerd := func() { exec.Command(script, "stop", ctrdDir).Run() }
	sock := strings.TrimSpace(string(out))
	for _, img := range []struct {
		ref string
		cmd []string
	}{{BusyboxImage, []string{"/bin/sh"}}, {PauseImage, []string{"/bin/sleep", "2147483647"}}} {
		if err := importImage(sock, tmp, rootfs, img.ref, img.cmd); err != nil {
			stopContainerd()
			return nil, err
		}
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		stopContainerd()
		return nil, err
	}
	e.RT = cri.NewRuntimeServiceClient(conn)
	e.stop = func() {
		removeCgroupParents()
		conn.Close()
		stopContainerd()
		os.RemoveAll(tmp)
	}
	waitImage(ctx, cri.NewImageServiceClient(conn))
	return e, nil
}

// Close stops containerd and removes the benchmark's pod cgroups and
// temporary directory.
func (e *Env) Close() { e.stop() }

func importImage(sock, tmp, rootfs, ref string, cmd []string) error {
	archive := filepath.Join(tmp, filepath.Base(strings.ReplaceAll(ref, ":", "_"))+".tar")
	if err := ociimage.PackFile(archive, rootfs, ociimage.Options{Ref: ref, Cmd: cmd}); err != nil {
		return err
	}
	if out, err := exec.Command("ctr", "-a", sock, "-n", "k8s.io", "images", "import", archive).CombinedOutput(); err != nil {
		return fmt.Errorf("import %s: %v: %s", ref, err, out)
	}
	return nil
}

func waitImage(ctx context.Context, img cri.ImageServiceClient) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: BusyboxImage}})
		if err == nil && st.Image != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Pod describes a pod with one busybox container, on the private
// containerd's CNI network (Berth refuses hostNetwork pods).
type Pod struct {
	Handler  string // "berth" or "runc"
	Name     string
	Hostname string // "" for none
	LogDir   string
	// Container and Command are the container's name and command.
	Container string
	Command   []string
	// Phases, if set, receives how long each CRI call took.
	Phases *Phases
}

// Phases are the CRI calls of one pod start.
type Phases struct {
	RunPodSandbox, CreateContainer, StartContainer time.Duration
}

// StartPod runs p and starts its container. A pod id is returned whenever
// the pod was created, so that the caller can remove it after a failure.
func (e *Env) StartPod(ctx context.Context, p Pod) (podID, ctrID string, err error) {
	ns := &cri.NamespaceOption{Network: cri.NamespaceMode_POD, Pid: cri.NamespaceMode_CONTAINER, Ipc: cri.NamespaceMode_POD}
	uid := fmt.Sprintf("bench-%s-%d", p.Handler, time.Now().UnixNano())
	pc := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: p.Name, Uid: uid, Namespace: "berth-bench"},
		Hostname:     p.Hostname,
		LogDirectory: p.LogDir,
		Linux: &cri.LinuxPodSandboxConfig{
			CgroupParent:    "/berth-bench/pod" + uid,
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: ns},
		},
	}
	os.MkdirAll(pc.LogDirectory, 0o755)
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var ph Phases
	if p.Phases != nil {
		defer func() { *p.Phases = ph }()
	}
	t0 := time.Now()
	pod, err := e.RT.RunPodSandbox(cctx, &cri.RunPodSandboxRequest{Config: pc, RuntimeHandler: p.Handler})
	ph.RunPodSandbox = time.Since(t0)
	if err != nil {
		return "", "", err
	}
	t0 = time.Now()
	c, err := e.RT.CreateContainer(cctx, &cri.CreateContainerRequest{PodSandboxId: pod.PodSandboxId, SandboxConfig: pc, Config: &cri.ContainerConfig{
		Metadata: &cri.ContainerMetadata{Name: p.Container},
		Image:    &cri.ImageSpec{Image: BusyboxImage},
		Command:  p.Command,
		LogPath:  p.Container + ".log",
		Linux:    &cri.LinuxContainerConfig{SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: ns}},
	}})
	ph.CreateContainer = time.Since(t0)
	if err != nil {
		return pod.PodSandboxId, "", err
	}
	t0 = time.Now()
	_, err = e.RT.StartContainer(cctx, &cri.StartContainerRequest{ContainerId: c.ContainerId})
	ph.StartContainer = time.Since(t0)
	if err != nil {
		return pod.PodSandboxId, "", err
	}
	return pod.PodSandboxId, c.ContainerId, nil
}

// RemovePod stops and removes a pod, as the kubelet does.
func (e *Env) RemovePod(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.RT.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: id})
	e.RT.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: id})
}

// removeCgroupParents removes the pod cgroups runc left under
// /berth-bench (a kubelet would own them) once they are empty.
func removeCgroupParents() {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/berth-bench/pod*")
	more, _ := filepath.Glob("/sys/fs/cgroup/berth-bench/pod*")
	for _, d := range append(dirs, more...) {
		os.Remove(d)
		os.Remove(filepath.Dir(d))
	}
}
