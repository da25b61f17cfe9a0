package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/hostmount"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/transport"
)

// IO is where a process's standard streams go on the host. A nil field
// means the stream is not attached.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Terminal       bool
}

func (o IO) stdio() *api.Stdio {
	return &api.Stdio{
		Stdin:    o.Stdin != nil,
		Stdout:   o.Stdout != nil,
		Stderr:   o.Stderr != nil && !o.Terminal,
		Terminal: o.Terminal,
	}
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128+signal when a signal killed it.
	Code     uint32
	ExitedAt time.Time
	// OOMKills is, for a container's init, the container's OOM-kill
	// count the guest read after the init exited: nil for an exec, or if
	// the guest could not read it.
	OOMKills *uint64
}

// Process is a container's init or an exec'd process in the guest.
type Process struct {
	sb          *Sandbox
	containerID string
	execID      string
	pid         uint32
	// asked is when the host asked the guest for the process: it cannot
	// have exited before.
	asked time.Time

	// outputDone is closed when every attached output stream has ended.
	outputDone chan struct{}
	conns      []net.Conn
}

// Pid returns the process's pid inside the guest.
func (p *Process) Pid() uint32 { return p.pid }

// ContainerConfig describes a container to create in the sandbox.
type ContainerConfig struct {
	ID string
	// Spec is the container's OCI spec as the host sees it; it is adapted
	// for the guest (oci.ForGuest) and not modified.
	Spec *specs.Spec
	// RootfsDir is the host directory holding the root file system.
	RootfsDir string
	// SandboxInitPid is the guest pid of the pod's sandbox container whose
	// namespaces CRI app containers join; 0 when there is none.
	SandboxInitPid uint32
	// PIDNamespacePid is the guest pid whose PID namespace the container
	// joins when its spec joins one by path, 0 for the sandbox
	// container's (oci.GuestSpecOptions).
	PIDNamespacePid uint32
	IO              IO
	// CgroupsPath is the container's linux.cgroupsPath as the caller
	// chose it (see oci.CgroupsPath), "" for none; with
	// sandbox_cgroup_only = false it exists on the host (podCgroups).
	CgroupsPath string
}

// CreateContainer shares the container's root file system and host bind
// mounts with the guest, creates the container there and attaches its
// stdio. The program starts with Start.
func (s *Sandbox) CreateContainer(ctx context.Context, cc ContainerConfig) (_ *Process, retErr error) {
	id := cc.ID
	if err := oci.ValidateID("container id", id); err != nil {
		return nil, err
	}
	if cc.Spec == nil || cc.Spec.Process == nil || cc.Spec.Root == nil {
		return nil, fmt.Errorf("spec needs process and root: %w", errdefs.ErrInvalidArgument)
	}
	guestSpec, err := oci.ForGuest(cc.Spec, oci.GuestSpecOptions{
		ContainerID: id, SandboxInitPid: cc.SandboxInitPid, PIDNamespacePid: cc.PIDNamespacePid, Rlimits: oci.OwnRlimits(),
	})
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	guestSpec.Process.Terminal = cc.IO.Terminal
	s.mu.Lock()
	if _, ok := s.mounts[id]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrAlreadyExists)
	}
	s.mounts[id] = nil
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.releaseMounts(id)
		}
	}()
	if err := s.addContainerCgroup(ctx, id, cc.CgroupsPath, linuxResources(cc.Spec.Linux)); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			s.removeContainerCgroup(context.WithoutCancel(ctx), id)
		}
	}()
	// Devices first: a request that cannot be met fails before anything
	// is mounted, and a failed create below unplugs them again.
	devices, diskMounts, err := s.attachDevices(ctx, id, cc.Spec)
	if err != nil {
		return nil, fmt.Errorf("container %q devices: %w", id, err)
	}
	defer func() {
		if retErr != nil {
			if err := s.detachDevices(context.WithoutCancel(ctx), id); err != nil {
				logrus.WithField("sandbox", s.id).WithField("container", id).WithError(err).Warn("unplug devices of a failed container")
			}
		}
	}()
	if st, err := os.Stat(cc.RootfsDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("rootfs %s is not a directory: %v: %w", cc.RootfsDir, err, errdefs.ErrInvalidArgument)
	}
	// A read-only root is read-only on the host, so virtiofsd cannot
	// write it whatever the guest asks; runc in the guest then cannot
	// create mount points in it, so the host does, as runc would.
	if cc.Spec.Root.Readonly {
		if err := hostmount.PrepareMountPoints(cc.RootfsDir, mountPoints(guestSpec, diskMounts)); err != nil {
			return nil, err
		}
	}
	rootMnt, err := s.tree.Bind(cc.RootfsDir, path.Join(id, "rootfs"), hostmount.BindOptions{Recursive: true, RecursiveReadOnly: cc.Spec.Root.Readonly})
	if err != nil {
		return nil, fmt.Errorf("share rootfs %s: %w", cc.RootfsDir, err)
	}
	s.addMount(id, rootMnt)
	if err := s.shareMounts(id, guestSpec, diskMounts); err != nil {
		return nil, err
	}
	b, err := json.Marshal(guestSpec)
	if err != nil {
		return nil, err
	}
	asked := time.Now()
	resp, err := s.agent.Create(ctx, &api.CreateRequest{ContainerId: id, Spec: b, Stdio: cc.IO.stdio(), Devices: devices})
	if err != nil {
		return nil, s.rpcError("create container", err)
	}
	p := &Process{sb: s, containerID: id, pid: resp.Pid, asked: asked}
	if err := p.attach(ctx, cc.IO); err != nil {
		s.agent.Delete(ctx, &api.DeleteRequest{ContainerId: id})
		return nil, err
	}
	s.updateHostCPU(ctx, id, cc.Spec.Linux, false)
	return p, nil
}

// shareMounts makes the spec's bind mounts of host paths reachable in the
// guest: each source is bind-mounted into the virtio-fs share, once for
// all the containers of the sandbox that mount it (sharedVolumes), and
// the mount's source rewritten to the guest path. Only what the spec names
// is shared. The pod's /dev/shm (a host tmpfs that
// CRI binds into every container) is kept inside the guest instead:
// sharing memory through virtio-fs would be slow and pointless. Every
// container of the pod binds one guest tmpfs (oci.GuestPodShm, mounted by
// the agent), so they share it as they do under runc.
//
// Mounts whose source is a host disk (diskMounts) are not shared: the disk
// is hot-plugged and the agent points the mount at the guest's node.
func (s *Sandbox) shareMounts(id string, spec *specs.Spec, diskMounts map[int]bool) error {
	subs := map[int][]string{} // see withWritableSubmounts
	for i, m := range spec.Mounts {
		if !oci.IsBindMount(m) || diskMounts[i] {
			continue
		}
		if m.Destination == "/dev/shm" {
			spec.Mounts[i].Source = oci.GuestPodShm(s.id)
			continue
		}
		// A `ro` mount is read-only on the host already: the guest's
		// own remount is not what keeps it read-only.
		guestPath, err := s.volumes.share(s.tree, id, m.Source, hostmount.BindOptions{
			Recursive: slices.Contains(m.Options, "rbind"), ReadOnly: oci.IsReadOnly(m), RecursiveReadOnly: slices.Contains(m.Options, "rro"),
		})
		if err != nil {
			return fmt.Errorf("share mount %s: %w", m.Destination, err)
		}
		spec.Mounts[i].Source = guestPath
		if rel := readOnlySubmounts(m); rel != nil {
			subs[i] = rel
		}
	}
	spec.Mounts = withWritableSubmounts(spec.Mounts, subs)
	return nil
}

// mountPoints lists what runc in the guest will mount on in the
// container's root, and its working directory.
func mountPoints(spec *specs.Spec, diskMounts map[int]bool) []hostmount.MountPoint {
	var out []hostmount.MountPoint
	for i, m := range spec.Mounts {
		dir := true
		if oci.IsBindMount(m) && !diskMounts[i] {
			if st, err := os.Stat(m.Source); err == nil && !st.IsDir() {
				dir = false
			}
		}
		out = append(out, hostmount.MountPoint{Path: m.Destination, Dir: dir})
	}
	if spec.Process != nil && spec.Process.Cwd != "" {
		out = append(out, hostmount.MountPoint{Path: spec.Process.Cwd, Dir: true})
	}
	return out
}

func (s *Sandbox) addMount(id string, mnt hostmount.Mount) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mounts[id] = append(s.mounts[id], mnt)
}

// Exec registers process in a running container and attaches its stdio;
// the program starts with Start.
func (s *Sandbox) Exec(ctx context.Context, containerID, execID string, process *specs.Process, stdio IO) (*Process, error) {
	if err := validateContainerExec(containerID, execID); err != nil {
		return nil, err
	}
	proc := *process
	proc.Terminal = stdio.Terminal
	proc.Rlimits = oci.InheritRlimits(process.Rlimits, oci.OwnRlimits()) // as runc exec's would (oci.OwnRlimits)
	b, err := json.Marshal(&proc)
	if err != nil {
		return nil, err
	}
	asked := time.Now()
	if _, err := s.agent.Exec(ctx, &api.ExecRequest{ContainerId: containerID, ExecId: execID, Process: b, Stdio: stdio.stdio()}); err != nil {
		return nil, s.rpcError("exec", err)
	}
	p := &Process{sb: s, containerID: containerID, execID: execID, asked: asked}
	if err := p.attach(ctx, stdio); err != nil {
		s.agent.Delete(ctx, &api.DeleteRequest{ContainerId: containerID, ExecId: execID})
		return nil, err
	}
	return p, nil
}

// DeleteContainer removes a stopped container from the guest and its root
// file system from the shared directory.
//
// The container's hot-plugged devices are unplugged once the guest has
// deleted it (nothing in the guest holds them then), which also closes
// the host devices in QEMU: after DeleteContainer, the host owns them
// again (a loop device can be detached, its file read).
func (s *Sandbox) DeleteContainer(ctx context.Context, id string) error {
	if err := oci.ValidateID("container id", id); err != nil {
		return err
	}
	_, err := s.agent.Delete(ctx, &api.DeleteRequest{ContainerId: id})
	if err != nil {
		err = s.rpcError("delete container", err)
	}
	return errors.Join(err, s.releaseContainer(ctx, id))
}

// ReleaseContainer undoes on the host what CreateContainer set up for a
// container (its cgroup, its mounts in the share, its devices) without
// the guest's own clean-up: for the last container of a VM that is
// destroyed next, whose agent Shutdown kills whatever is left anyway. The
// guest's delete (libcontainer's destroy, ~40 ms under TCG) would only
// delay the reply containerd waits for.
func (s *Sandbox) ReleaseContainer(ctx context.Context, id string) error {
	if err := oci.ValidateID("container id", id); err != nil {
		return err
	}
	return s.releaseContainer(ctx, id)
}

func (s *Sandbox) releaseContainer(ctx context.Context, id string) error {
	s.updateHostCPU(ctx, id, nil, true)
	s.removeContainerCgroup(ctx, id)
	err := s.releaseMounts(id)
	if derr := s.detachDevices(ctx, id); derr != nil {
		err = errors.Join(err, fmt.Errorf("container %q: %w", id, derr))
	}
	return err
}

// releaseMounts undoes what CreateContainer mounted for a container, last
// mount first.
func (s *Sandbox) releaseMounts(id string) error {
	s.mu.Lock()
	mnts := s.mounts[id]
	delete(s.mounts, id)
	s.mu.Unlock()
	errs := []error{s.volumes.release(s.tree, id)}
	for i := len(mnts) - 1; i >= 0; i-- {
		if err := s.tree.Unmount(mnts[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if errors.Join(errs...) == nil && mnts != nil {
		errs = append(errs, s.tree.RemoveAll(id))
	}
	return errors.Join(errs...)
}

// rpcError turns an agent error into a classified error and, when the VM
// has died, says so: that, not the broken connection, is the cause a user
// needs to see.
func (s *Sandbox) rpcError(op string, err error) error {
	// A dying QEMU closes its sockets a moment before the host reaps it:
	// when the connection broke, give the exit a moment to be noticed.
	wait := time.Duration(0)
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, transport.ErrClosed) {
		wait = 2 * time.Second
	}
	grace := time.After(wait)
	select {
	case <-s.vmm.Done():
		return fmt.Errorf("%s: the VM exited: %v: %w", op, s.VMError(), errdefs.ErrUnavailable)
	case <-grace:
	}
	return fmt.Errorf("%s: %w", op, errgrpc.ToNative(err))
}

// attach opens one stream per requested stdio pipe. Output streams are
// copied until the guest closes them.
func (p *Process) attach(ctx context.Context, stdio IO) error {
	p.outputDone = make(chan struct{})
	var wg sync.WaitGroup
	open := func(kind api.StreamKind) (net.Conn, error) {
		conn, err := p.sb.openStream(ctx, &api.StreamHeader{ContainerId: p.containerID, ExecId: p.execID, Kind: kind})
		if err != nil {
			return nil, fmt.Errorf("attach %v: %w", kind, err)
		}
		p.conns = append(p.conns, conn)
		return conn, nil
	}
	copyOut := func(kind api.StreamKind, w io.Writer) error {
		conn, err := open(kind)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(w, conn)
		}()
		return nil
	}
	var err error
	if stdio.Stdout != nil {
		err = copyOut(api.StreamKind_STREAM_STDOUT, stdio.Stdout)
	}
	if err == nil && stdio.Stderr != nil && !stdio.Terminal {
		err = copyOut(api.StreamKind_STREAM_STDERR, stdio.Stderr)
	}
	if err == nil && stdio.Stdin != nil {
		var conn net.Conn
		if conn, err = open(api.StreamKind_STREAM_STDIN); err == nil {
			go func() {
				io.Copy(conn, stdio.Stdin)
				// Closing the stream is EOF for the process's stdin.
				conn.Close()
			}()
		}
	}
	go func() { wg.Wait(); close(p.outputDone) }()
	if err != nil {
		p.closeStreams()
	}
	return err
}

func (p *Process) closeStreams() {
	for _, c := range p.conns {
		c.Close()
	}
}

// Start runs the process's program.
func (p *Process) Start(ctx context.Context) error {
	resp, err := p.sb.agent.Start(ctx, &api.StartRequest{ContainerId: p.containerID, ExecId: p.execID})
	if err != nil {
		return p.sb.rpcError("start", err)
	}
	p.pid = resp.Pid
	return nil
}

// Signal sends sig to the process.
func (p *Process) Signal(ctx context.Context, sig syscall.Signal) error {
	return p.Kill(ctx, sig, false)
}

// Kill sends sig to the process, or with all to every process of its
// container (containerd's `kill --all`).
func (p *Process) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	if _, err := p.sb.agent.Kill(ctx, &api.KillRequest{ContainerId: p.containerID, ExecId: p.execID, Signal: uint32(sig), All: all}); err != nil {
		return p.sb.rpcError("signal", err)
	}
	return nil
}

// Resize changes the size of the process's terminal.
func (p *Process) Resize(ctx context.Context, width, height uint32) error {
	if _, err := p.sb.agent.ResizePty(ctx, &api.ResizePtyRequest{ContainerId: p.containerID, ExecId: p.execID, Width: width, Height: height}); err != nil {
		return p.sb.rpcError("resize pty", err)
	}
	return nil
}

// Wait returns the exit status once the process has exited and all of its
// output has reached the host writers. If the VM dies first, it returns an
// error saying how the VM ended.
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	type result struct {
		resp *api.WaitResponse
		err  error
	}
	ch := make(chan result, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		resp, err := p.sb.agent.Wait(wctx, &api.WaitRequest{ContainerId: p.containerID, ExecId: p.execID})
		ch <- result{resp, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-p.sb.vmm.Done():
		p.closeStreams()
		return ExitStatus{}, fmt.Errorf("the VM exited while the container was running: %v: %w", p.sb.VMError(), errdefs.ErrUnavailable)
	}
	if r.err != nil {
		p.closeStreams()
		return ExitStatus{}, p.sb.rpcError("wait", r.err)
	}
	// The guest closes the output streams when the pipes reach EOF, which
	// follows the exit at once unless a background child still holds them.
	select {
	case <-p.outputDone:
	case <-p.sb.vmm.Done():
	case <-ctx.Done():
		return ExitStatus{}, ctx.Err()
	}
	return ExitStatus{Code: r.resp.ExitStatus, ExitedAt: exitTime(r.resp.ExitedAt, p.asked, time.Now()), OOMKills: r.resp.OomKillCount}, nil
}

// exitTime is the exit time the guest reported, kept only if it lies
// between when the host asked for the process and when it heard of the
// exit; otherwise (missing, a hostile guest's, or a clock that drifted
// since SetClock) the time the host heard. An honest guest's time lies
// within: its clock is set from the host's when the agent connects.
func exitTime(reported *timestamppb.Timestamp, asked, heard time.Time) time.Time {
	if !reported.IsValid() {
		return heard
	}
	t := reported.AsTime()
	if t.Before(asked) || t.After(heard) {
		return heard
	}
	return t
}

// updateHostCPU follows a container's CPU limits into the sandbox cgroup.
// A failure is logged, not returned: the guest enforces the container's
// own limit, the host cgroup is the pod-wide second line.
func (s *Sandbox) updateHostCPU(ctx context.Context, id string, linux *specs.Linux, gone bool) {
	var res *specs.LinuxResources
	if linux != nil {
		res = linux.Resources
	}
	if err := s.setContainerCPU(ctx, id, res, gone); err != nil {
		logrus.WithError(err).WithField("sandbox", s.id).WithField("container", id).Warn("update sandbox cgroup CPU limits")
	}
}

// ErrVMExited reports whether err says the VM died.
func ErrVMExited(err error) bool { return errors.Is(err, errdefs.ErrUnavailable) }

// PauseContainer freezes a container's processes.
func (s *Sandbox) PauseContainer(ctx context.Context, id string) error {
	if _, err := s.agent.Pause(ctx, &api.ContainerRequest{ContainerId: id}); err != nil {
		return s.rpcError("pause", err)
	}
	return nil
}

// ResumeContainer thaws a paused container.
func (s *Sandbox) ResumeContainer(ctx context.Context, id string) error {
	if _, err := s.agent.Resume(ctx, &api.ContainerRequest{ContainerId: id}); err != nil {
		return s.rpcError("resume", err)
	}
	return nil
}

// UpdateContainer applies new resource limits to a container in the guest.
func (s *Sandbox) UpdateContainer(ctx context.Context, id string, res *specs.LinuxResources) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if _, err := s.agent.Update(ctx, &api.UpdateRequest{ContainerId: id, Resources: b}); err != nil {
		return s.rpcError("update", err)
	}
	s.updateHostCPU(ctx, id, &specs.Linux{Resources: res}, false)
	s.updateContainerCgroup(ctx, id, res)
	return nil
}

// ContainerStats reads a container's cgroup in the guest.
func (s *Sandbox) ContainerStats(ctx context.Context, id string) (*api.StatsResponse, error) {
	st, err := s.agent.Stats(ctx, &api.ContainerRequest{ContainerId: id})
	if err != nil {
		return nil, s.rpcError("stats", err)
	}
	return st, nil
}

// WaitOOM blocks until the container's OOM-kill count exceeds after and
// returns the new count.
func (s *Sandbox) WaitOOM(ctx context.Context, id string, after uint64) (uint64, error) {
	resp, err := s.agent.WaitOOM(ctx, &api.WaitOOMRequest{ContainerId: id, After: after})
	if err != nil {
		return 0, s.rpcError("wait for OOM", err)
	}
	return resp.OomKillCount, nil
}

// DeleteExec removes an exited exec'd process from the guest.
func (s *Sandbox) DeleteExec(ctx context.Context, containerID, execID string) error {
	if err := validateContainerExec(containerID, execID); err != nil {
		return err
	}
	if _, err := s.agent.Delete(ctx, &api.DeleteRequest{ContainerId: containerID, ExecId: execID}); err != nil {
		return s.rpcError("delete exec", err)
	}
	return nil
}

// validateContainerExec checks the ids of an exec'd process.
func validateContainerExec(containerID, execID string) error {
	if err := oci.ValidateID("container id", containerID); err != nil {
		return err
	}
	return oci.ValidateID("exec id", execID)
}
