// Package agent is berth-agent's service inside the guest: it creates
// containers from OCI specs with runc's libcontainer, runs exec'd
// processes, relays their stdio over transport streams and reports exits.
//
// It runs in the guest only and imports no host package: its contract with
// the host is api/agent/v1 and the stdio stream header defined there.
//
// Lifecycle of a container, as the host drives it (it mirrors containerd's
// task API, so the shim maps calls one to one):
//
//	Create   libcontainer runs runc's init up to the point where it waits
//	         to exec the user's program (like `runc create`)
//	attach   the host opens stdio streams; output produced later waits in
//	         the pipes until the host reads it
//	Start    the init execs the user's program (`runc start`)
//	Wait     returns the exit status once libcontainer has reaped it
//	Delete   destroys the container (cgroup, state) and frees the stdio
package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/oci"
)

// Version is the agent's version, reported by Info.
const Version = "0.1.0"

// APIVersion is the version of api/agent this agent serves.
const APIVersion = api.APIVersion

// Options configure the service.
type Options struct {
	// StateRoot is libcontainer's state directory (on a tmpfs).
	StateRoot string
	// PrepareRootfs makes sure the container's root file system is
	// reachable before libcontainer uses it (mounts the virtio-fs share on
	// first use). It may be nil.
	PrepareRootfs func(ctx context.Context, rootPath string) error
	// PowerOff ends the VM; called by Shutdown after it has replied.
	PowerOff func()
	// DebugExec enables the DebugExec RPC (see CmdlineDebugExec).
	DebugExec bool
	// SysRoot is where /sys and /proc are found ("/" unless testing).
	SysRoot string
	// DeviceFS, when set, replaces /sys and /dev for finding hot-plugged
	// devices (tests).
	DeviceFS *deviceFS
}

// Service implements api.AgentService.
type Service struct {
	opts Options

	mu         sync.Mutex
	containers map[string]*container

	memory   *memoryOnliner
	pressure *pressureWatch
	volumes  volumeMounts
}

type container struct {
	id string
	// lc is the runc container; nil for a pod sandbox, whose init is
	// the pod's namespace holder in holderCgroup (holder.go).
	lc           *libcontainer.Container
	holderCgroup cgroups.Manager
	init         *process
	execs        map[string]*process
	// privatePidNS: the container has its own pid namespace (signal.go).
	privatePidNS bool
	// paused is set between a successful Pause and Resume.
	paused atomic.Bool
	// cgroupPaths are libcontainer's cgroup directories, read once at
	// create: Stats and WaitOOM then never wait for libcontainer's lock.
	cgroupPaths map[string]string
	// volumes are the shared volumes it holds in the agent's namespace
	// (volumes.go).
	volumes []string
}

// New returns the agent service.
func New(opts Options) *Service {
	root := opts.SysRoot
	if root == "" {
		root = "/"
	}
	return &Service{opts: opts, containers: map[string]*container{}, memory: &memoryOnliner{sysRoot: root}, pressure: newPressureWatch(root)}
}

var _ api.AgentService = (*Service)(nil)

// toGRPC is the one place where classified errors become RPC errors.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *Service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok || c == nil { // nil: reserved while Create runs
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) getProcess(containerID, execID string) (*container, *process, error) {
	c, err := s.get(containerID)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %q in container %q: %w", execID, containerID, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// Info reports the guest.
func (s *Service) Info(ctx context.Context, _ *api.InfoRequest) (*api.InfoResponse, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, toGRPC(err)
	}
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	var si unix.Sysinfo_t
	unix.Sysinfo(&si)
	return &api.InfoResponse{
		AgentVersion:  Version,
		ApiVersion:    APIVersion,
		ApiDigest:     api.Digest(),
		KernelRelease: unix.ByteSliceToString(uts.Release[:]),
		BootId:        strings.TrimSpace(string(bootID)),
		MemTotalBytes: si.Totalram * uint64(si.Unit),
		OnlineCpus:    uint32(onlineCPUs()),
	}, nil
}

// SetClock sets the guest's wall clock to the host's: under TCG the guest
// has no paravirtual clock and starts from the emulated RTC, whole seconds
// only, and then drifts with its TSC. The host's time arrives late by the
// request's transit, so the guest is never set ahead of the host by it.
// A guest behind by clockStepForward or more is stepped forward at once
// (the boot's difference, the transit the first set left); one ahead by
// clockStepBack or more is stepped back; anything smaller (the drift the
// host's periodic calls find) is slewed away, so that the time containers
// read does not jump back. Only CLOCK_REALTIME moves; timers and
// durations in the guest run on the monotonic clock.
func (s *Service) SetClock(ctx context.Context, req *api.SetClockRequest) (*api.SetClockResponse, error) {
	if !req.GetHostTime().IsValid() {
		return nil, toGRPC(fmt.Errorf("set clock: host_time is missing or out of range: %w", errdefs.ErrInvalidArgument))
	}
	before := time.Now()
	host := req.GetHostTime().AsTime()
	if off := host.Sub(before); stepClock(off) {
		ts := unix.NsecToTimespec(host.UnixNano())
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return nil, toGRPC(fmt.Errorf("set clock: clock_settime: %w", err))
		}
	} else {
		// adjtime(3)'s single-shot slew: the kernel runs the clock up
		// to 0.05% fast or slow until the offset is gone.
		tx := unix.Timex{Modes: unix.ADJ_OFFSET_SINGLESHOT, Offset: off.Microseconds()}
		if _, err := unix.Adjtimex(&tx); err != nil {
			return nil, toGRPC(fmt.Errorf("set clock: adjtimex: %w", err))
		}
	}
	return &api.SetClockResponse{GuestTime: timestamppb.New(before)}, nil
}

// clockStepForward and clockStepBack are the smallest differences
// between the host's clock and the guest's that SetClock steps rather
// than slews: slewing 10 ms away takes 20 s, a second half an hour.
const (
	clockStepForward = 10 * time.Millisecond
	clockStepBack    = 100 * time.Millisecond
)

// stepClock reports whether a guest clock off by off (host minus guest:
// positive when the guest is behind) is set at once rather than slewed.
func stepClock(off time.Duration) bool {
	return off >= clockStepForward || off <= -clockStepBack
}

func onlineCPUs() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 0
	}
	return set.Count()
}

// Create builds the container and its init process, stopped before exec.
func (s *Service) Create(ctx context.Context, req *api.CreateRequest) (*api.CreateResponse, error) {
	pid, err := s.create(ctx, req)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &api.CreateResponse{Pid: uint32(pid)}, nil
}

func (s *Service) create(ctx context.Context, req *api.CreateRequest) (int, error) {
	id := req.ContainerId
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return 0, fmt.Errorf("container id %q is not valid: %w", id, errdefs.ErrInvalidArgument)
	}
	var spec specs.Spec
	if err := json.Unmarshal(req.Spec, &spec); err != nil {
		return 0, fmt.Errorf("decode OCI spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil || spec.Root == nil || spec.Linux == nil {
		return 0, fmt.Errorf("OCI spec needs process, root and linux: %w", errdefs.ErrInvalidArgument)
	}
	if req.Stdio.GetTerminal() != spec.Process.Terminal {
		return 0, fmt.Errorf("stdio.terminal (%v) disagrees with process.terminal (%v): %w", req.Stdio.GetTerminal(), spec.Process.Terminal, errdefs.ErrInvalidArgument)
	}

	s.mu.Lock()
	if _, ok := s.containers[id]; ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("container %q: %w", id, errdefs.ErrAlreadyExists)
	}
	// Reserve the id while the slow work happens without the lock.
	s.containers[id] = nil
	s.mu.Unlock()
	ok := false
	defer func() {
		if !ok {
			s.mu.Lock()
			delete(s.containers, id)
			s.mu.Unlock()
		}
	}()

	if s.opts.PrepareRootfs != nil {
		if err := s.opts.PrepareRootfs(ctx, spec.Root.Path); err != nil {
			return 0, err
		}
	}
	if _, err := os.Stat(spec.Root.Path); err != nil {
		// Not NotFound: that class means "the program does not exist"
		// (exit 127); a root file system that did not reach the guest
		// is Berth's failure.
		return 0, fmt.Errorf("container root %s is missing in the guest: %v: %w", spec.Root.Path, err, errdefs.ErrFailedPrecondition)
	}
	if err := checkSeccomp(spec.Linux.Seccomp); err != nil {
		return 0, fmt.Errorf("container %q: %w", id, err)
	}
	if len(req.Devices) > 0 {
		if err := applyDevices(ctx, s.devfs(), &spec, req.Devices); err != nil {
			return 0, fmt.Errorf("container %q: %w", id, err)
		}
	}
	if err := mountPodShm(spec.Mounts); err != nil {
		return 0, err
	}
	volumes, err := s.volumes.reach(spec.Mounts)
	if err != nil {
		return 0, fmt.Errorf("container %q: %w", id, err)
	}
	defer func() {
		if !ok {
			s.volumes.release(volumes)
		}
	}()
	if sharesAgentNetNS(&spec) {
		if err := applyPodNetSysctls("/proc/sys", &spec); err != nil {
			return 0, fmt.Errorf("container %q: %w", id, err)
		}
	}
	if spec.Linux.CgroupsPath == "" {
		spec.Linux.CgroupsPath = "/berth/" + id
	}
	if err := fitGuestResources(spec.Linux.Resources, cgroups.HugePageSizes()); err != nil {
		return 0, fmt.Errorf("container %q: %w", id, err)
	}
	if holdsPodNamespaces(&spec) {
		c, err := s.createHolder(id, &spec)
		if err != nil {
			return 0, err
		}
		s.mu.Lock()
		s.containers[id] = c
		s.mu.Unlock()
		ok = true
		return c.init.pid, nil
	}
	lcConfig, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName: id,
		Spec:       &spec,
	})
	if err != nil {
		return 0, fmt.Errorf("convert OCI spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	lc, err := libcontainer.Create(s.opts.StateRoot, id, lcConfig)
	if err != nil {
		return 0, fmt.Errorf("create container %q: %w", id, err)
	}
	lp, err := newLibcontainerProcess(spec.Process)
	if err != nil {
		lc.Destroy()
		return 0, err
	}
	lp.Init = true
	p := newProcess("", req.Stdio, lp)
	err = p.setupIO()
	if err == nil {
		err = lc.Start(lp)
	}
	if err == nil {
		err = p.afterStart()
	}
	if err != nil {
		p.release()
		lc.Destroy()
		return 0, classifyExecFailure(fmt.Errorf("start init of container %q: %w", id, err))
	}
	c := &container{id: id, lc: lc, init: p, execs: map[string]*process{}, privatePidNS: lcConfig.Namespaces.IsPrivate(configs.NEWPID), volumes: volumes}
	if st, err := lc.State(); err == nil {
		c.cgroupPaths = st.CgroupPaths
	}
	// Without a pid namespace of its own, the init's exit kills nothing
	// else: what it left running (a background child, a daemon) would
	// hold its stdout open, so the host would never see the container
	// end. runc's shim kills the rest of the cgroup then
	// (ShouldKillAllOnExit); so does the agent, before the exit is seen.
	var onExit func()
	if !c.privatePidNS {
		onExit = func() { killAll(c, unix.SIGKILL) }
	}
	if err := p.markStarted(onExit); err != nil {
		p.release()
		lc.Destroy()
		return 0, err
	}
	s.mu.Lock()
	s.containers[id] = c
	s.mu.Unlock()
	ok = true
	return p.pid, nil
}

// newLibcontainerProcess converts an OCI process (what runc's newProcess
// does for `runc run`/`runc exec`).
func newLibcontainerProcess(p *specs.Process) (*libcontainer.Process, error) {
	if len(p.Args) == 0 {
		return nil, fmt.Errorf("process.args is empty: %w", errdefs.ErrInvalidArgument)
	}
	nnp := p.NoNewPrivileges
	lp := &libcontainer.Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             p.Cwd,
		NoNewPrivileges: &nnp,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
	}
	if p.ConsoleSize != nil {
		lp.ConsoleWidth, lp.ConsoleHeight = uint16(p.ConsoleSize.Width), uint16(p.ConsoleSize.Height)
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable,
			Permitted: c.Permitted, Ambient: c.Ambient,
		}
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	for _, r := range p.Rlimits {
		t, ok := oci.RlimitResource(r.Type)
		if !ok {
			return nil, fmt.Errorf("process.rlimits: unknown type %q: %w", r.Type, errdefs.ErrInvalidArgument)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: r.Hard, Soft: r.Soft})
	}
	return lp, nil
}

// Start runs the init's program, or an exec'd process.
func (s *Service) Start(ctx context.Context, req *api.StartRequest) (*api.StartResponse, error) {
	c, p, err := s.getProcess(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, toGRPC(err)
	}
	if req.ExecId == "" {
		if c.lc == nil {
			return &api.StartResponse{Pid: uint32(p.pid)}, nil // the holder runs from Create on
		}
		if err := c.lc.Exec(); err != nil {
			return nil, toGRPC(fmt.Errorf("start container %q: %w", c.id, err))
		}
		return &api.StartResponse{Pid: uint32(p.pid)}, nil
	}
	if p.isStarted() {
		return nil, toGRPC(fmt.Errorf("exec %q already started: %w", p.id, errdefs.ErrFailedPrecondition))
	}
	if c.paused.Load() {
		return nil, toGRPC(errPaused(c.id))
	}
	err = c.lc.Run(p.lp)
	if err == nil {
		err = p.afterStart()
	}
	if err == nil {
		err = p.markStarted(nil)
	}
	if err != nil {
		p.release()
		// A failed exec counts as exited so Wait does not block forever.
		p.mu.Lock()
		p.status, p.exitedAt = 255, time.Now()
		p.mu.Unlock()
		if !p.hasExited() {
			close(p.exited)
		}
		return nil, toGRPC(classifyExecFailure(fmt.Errorf("start exec %q in container %q: %w", p.id, c.id, err)))
	}
	return &api.StartResponse{Pid: uint32(p.pid)}, nil
}

// Exec registers a process to run in a container; Start runs it, after
// the host has attached its stdio.
func (s *Service) Exec(ctx context.Context, req *api.ExecRequest) (*emptypb.Empty, error) {
	c, err := s.get(req.ContainerId)
	if err != nil {
		return nil, toGRPC(err)
	}
	if req.ExecId == "" {
		return nil, toGRPC(fmt.Errorf("exec id is empty: %w", errdefs.ErrInvalidArgument))
	}
	if c.lc == nil {
		return nil, toGRPC(errHolderExec(c.id))
	}
	var sp specs.Process
	if err := json.Unmarshal(req.Process, &sp); err != nil {
		return nil, toGRPC(fmt.Errorf("decode OCI process: %v: %w", err, errdefs.ErrInvalidArgument))
	}
	if req.Stdio.GetTerminal() != sp.Terminal {
		return nil, toGRPC(fmt.Errorf("stdio.terminal disagrees with process.terminal: %w", errdefs.ErrInvalidArgument))
	}
	lp, err := newLibcontainerProcess(&sp)
	if err != nil {
		return nil, toGRPC(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := c.execs[req.ExecId]; ok {
		return nil, toGRPC(fmt.Errorf("exec %q: %w", req.ExecId, errdefs.ErrAlreadyExists))
	}
	p := newProcess(req.ExecId, req.Stdio, lp)
	// Pipes exist from now on, so the host can attach before Start.
	if err := p.setupIO(); err != nil {
		p.release()
		return nil, toGRPC(fmt.Errorf("exec %q stdio: %w", req.ExecId, err))
	}
	c.execs[req.ExecId] = p
	return &emptypb.Empty{}, nil
}

// Kill signals a process. Signalling a process that has already exited
// succeeds, as containerd expects.
func (s *Service) Kill(ctx context.Context, req *api.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.getProcess(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, toGRPC(err)
	}
	sig := unix.Signal(req.Signal)
	if p.hasExited() && !req.All && req.ExecId != "" {
		return &emptypb.Empty{}, nil
	}
	switch {
	case req.All:
		killAll(c, sig)
	case req.ExecId == "":
		if err := signalInit(c, p, sig); err != nil {
			return nil, toGRPC(err)
		}
	default:
		if !p.isStarted() {
			return nil, toGRPC(fmt.Errorf("exec %q not started: %w", p.id, errdefs.ErrFailedPrecondition))
		}
		if err := p.lp.Signal(sig); err != nil && !p.hasExited() {
			return nil, toGRPC(fmt.Errorf("signal exec %q: %w", p.id, err))
		}
	}
	return &emptypb.Empty{}, nil
}

// Wait blocks until the process exits.
func (s *Service) Wait(ctx context.Context, req *api.WaitRequest) (*api.WaitResponse, error) {
	c, p, err := s.getProcess(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, toGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, toGRPC(ctx.Err())
	}
	p.mu.Lock()
	resp := &api.WaitResponse{ExitStatus: p.status, ExitedAt: timestamppb.New(p.exitedAt)}
	p.mu.Unlock()
	// The container's processes died with its init, so the count is
	// final; the cgroup lasts until Delete.
	if req.ExecId == "" {
		if n, ok := oomKillCount(c.cgroupPaths[""]); ok {
			resp.OomKillCount = &n
		}
	}
	return resp, nil
}

// Pids lists the container's processes.
func (s *Service) Pids(ctx context.Context, req *api.PidsRequest) (*api.PidsResponse, error) {
	c, err := s.get(req.ContainerId)
	if err != nil {
		return nil, toGRPC(err)
	}
	pids, err := c.processes()
	if err != nil {
		return nil, toGRPC(fmt.Errorf("list processes of %q: %w", c.id, err))
	}
	resp := &api.PidsResponse{}
	for _, pid := range pids {
		resp.Pids = append(resp.Pids, uint32(pid))
	}
	return resp, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, req *api.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := p.resize(req.Width, req.Height); err != nil {
		return nil, toGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, req *api.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, toGRPC(err)
	}
	p.closeStdin()
	return &emptypb.Empty{}, nil
}

// Delete removes an exited exec, or a container whose init has exited.
func (s *Service) Delete(ctx context.Context, req *api.DeleteRequest) (*api.DeleteResponse, error) {
	c, p, err := s.getProcess(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, toGRPC(err)
	}
	if p.isStarted() && !p.hasExited() {
		return nil, toGRPC(fmt.Errorf("process %q of container %q is still running: %w", p.id, c.id, errdefs.ErrFailedPrecondition))
	}
	s.mu.Lock()
	if req.ExecId != "" {
		delete(c.execs, req.ExecId)
	} else {
		delete(s.containers, c.id)
	}
	s.mu.Unlock()
	if req.ExecId == "" {
		for _, e := range c.execs {
			e.release()
		}
		if err := c.destroy(); err != nil {
			log(ctx).WithError(err).WithField("container", c.id).Warn("destroy container")
		}
		s.volumes.release(c.volumes)
	}
	p.release()
	p.mu.Lock()
	defer p.mu.Unlock()
	return &api.DeleteResponse{ExitStatus: p.status, ExitedAt: timestamppb.New(p.exitedAt)}, nil
}

// Shutdown kills every container, syncs the guest's file systems (a
// hot-plugged volume's writes reach the host's disk image), replies, and
// powers the VM off. The host quits the VM as soon as the reply arrives,
// so nothing the guest does after the sync is relied on.
func (s *Service) Shutdown(ctx context.Context, _ *emptypb.Empty) (*emptypb.Empty, error) {
	s.mu.Lock()
	for _, c := range s.containers {
		if c != nil {
			signalInit(c, c.init, unix.SIGKILL)
		}
	}
	s.mu.Unlock()
	unix.Sync()
	if s.opts.PowerOff != nil {
		go func() {
			// Let the reply reach the host first.
			time.Sleep(50 * time.Millisecond)
			s.opts.PowerOff()
		}()
	}
	return &emptypb.Empty{}, nil
}

// ServeStdio accepts stdio streams: each starts with an api.StreamHeader
// naming the process and the stream.
func (s *Service) ServeStdio(ctx context.Context, l net.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			if err := s.attachStream(ctx, conn); err != nil {
				log(ctx).WithError(err).Warn("attach stdio stream")
				conn.Close()
			}
		}()
	}
}

func (s *Service) attachStream(ctx context.Context, conn net.Conn) error {
	var hdr api.StreamHeader
	if err := protodelim.UnmarshalFrom(byteReader{conn}, &hdr); err != nil {
		return fmt.Errorf("read stream header: %w", err)
	}
	_, p, err := s.getProcess(hdr.ContainerId, hdr.ExecId)
	if err != nil {
		return err
	}
	// An exec's pty exists only once Start has run it, and the host
	// attaches before Start: wait for it.
	select {
	case <-p.ioReady:
	case <-p.exited:
		return fmt.Errorf("process %q exited before its stdio was attached: %w", hdr.ExecId, errdefs.ErrFailedPrecondition)
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.attach(hdr.Kind, conn)
}

// byteReader reads one byte at a time, so that decoding the header never
// consumes payload bytes that follow it.
type byteReader struct{ c net.Conn }

func (r byteReader) Read(b []byte) (int, error) { return r.c.Read(b) }

func (r byteReader) ReadByte() (byte, error) {
	var b [1]byte
	n, err := r.c.Read(b[:])
	if n == 1 {
		return b[0], nil
	}
	if err == nil {
		err = syscall.EIO
	}
	return 0, err
}

func log(ctx context.Context) *logrus.Entry { return logrus.NewEntry(logrus.StandardLogger()) }

// Pause freezes a container.
func (s *Service) Pause(ctx context.Context, req *api.ContainerRequest) (*emptypb.Empty, error) {
	c, err := s.get(req.ContainerId)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := c.freeze(cgroups.Frozen); err != nil {
		return nil, toGRPC(fmt.Errorf("pause %q: %w", c.id, err))
	}
	c.paused.Store(true)
	return &emptypb.Empty{}, nil
}

// Resume thaws a paused container.
func (s *Service) Resume(ctx context.Context, req *api.ContainerRequest) (*emptypb.Empty, error) {
	c, err := s.get(req.ContainerId)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := c.freeze(cgroups.Thawed); err != nil {
		return nil, toGRPC(fmt.Errorf("resume %q: %w", c.id, err))
	}
	c.paused.Store(false)
	return &emptypb.Empty{}, nil
}

// Update applies new resource limits to a container's cgroup.
func (s *Service) Update(ctx context.Context, req *api.UpdateRequest) (*emptypb.Empty, error) {
	c, err := s.get(req.ContainerId)
	if err != nil {
		return nil, toGRPC(err)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(req.Resources, &res); err != nil {
		return nil, toGRPC(fmt.Errorf("decode resources: %v: %w", err, errdefs.ErrInvalidArgument))
	}
	if err := c.setResources(&res); err != nil {
		return nil, toGRPC(fmt.Errorf("update %q: %w", c.id, err))
	}
	return &emptypb.Empty{}, nil
}

// setResources applies new limits to the container's cgroup.
func (c *container) setResources(res *specs.LinuxResources) error {
	if c.lc == nil {
		r := &cgroups.Resources{}
		applyResources(r, res)
		return c.holderCgroup.Set(r)
	}
	config := c.lc.Config()
	applyResources(config.Cgroups.Resources, res)
	return c.lc.Set(config)
}

// processes lists the container's processes, read from its cgroup without
// libcontainer's lock (signal.go).
func (c *container) processes() ([]int, error) {
	if c.lc == nil {
		return c.holderCgroup.GetAllPids()
	}
	return c.lc.Processes()
}

// freeze pauses or thaws the container's cgroup.
func (c *container) freeze(state cgroups.FreezerState) error {
	switch {
	case c.lc == nil:
		return c.holderCgroup.Freeze(state)
	case state == cgroups.Frozen:
		return c.lc.Pause()
	}
	return c.lc.Resume()
}

// destroy removes what the container left: libcontainer's state and
// cgroup, or the holder's cgroup.
func (c *container) destroy() error {
	if c.lc == nil {
		return c.holderCgroup.Destroy()
	}
	return c.lc.Destroy()
}

// applyResources copies the limits an update may change (what `runc
// update` accepts) into libcontainer's resources.
func applyResources(r *cgroups.Resources, res *specs.LinuxResources) {
	if m := res.Memory; m != nil {
		if m.Limit != nil {
			r.Memory = *m.Limit
		}
		if m.Reservation != nil {
			r.MemoryReservation = *m.Reservation
		}
		if m.Swap != nil {
			r.MemorySwap = *m.Swap
		}
	}
	if c := res.CPU; c != nil {
		if c.Shares != nil {
			r.CpuShares = *c.Shares
			r.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*c.Shares)
		}
		if c.Quota != nil {
			r.CpuQuota = *c.Quota
		}
		if c.Period != nil {
			r.CpuPeriod = *c.Period
		}
		// c.Cpus and c.Mems name host CPUs and nodes: not applied in the
		// guest (fitGuestResources).
	}
	if p := res.Pids; p != nil && p.Limit != nil {
		limit := *p.Limit
		r.PidsLimit = &limit
	}
}

// Stats reads the container's cgroup.
func (s *Service) Stats(ctx context.Context, req *api.ContainerRequest) (*api.StatsResponse, error) {
	c, err := s.get(req.ContainerId)
	if err != nil {
		return nil, toGRPC(err)
	}
	paths := c.cgroupPaths
	// libcontainer names the unified directory ""; on a guest booted
	// with cgroup v1 it names one directory per controller instead.
	var r *api.StatsResponse
	switch {
	case paths[""] != "":
		r, err = readCgroup2Stats(paths[""])
	case paths["memory"] != "":
		r, err = readCgroup1Stats(paths)
	default:
		return nil, toGRPC(fmt.Errorf("container %q has no cgroup: %w", c.id, errdefs.ErrNotImplemented))
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	return r, nil
}

// oomPollInterval is how often WaitOOM reads memory.events when it cannot
// watch the file (no cgroup v2, or inotify failed); the kill itself has
// already happened, so latency only delays the event. (Variables, so
// that a test can show that the watch alone wakes WaitOOM.)
var oomPollInterval = 200 * time.Millisecond

// oomBackstop is how often WaitOOM reads memory.events although it
// watches it: the kernel notifies every change of the file, so this only
// bounds the cost of a missed notification.
var oomBackstop = 10 * time.Second

// WaitOOM returns once the container's OOM-kill count exceeds req.After.
//
// It sleeps on an inotify watch of the container's memory.events, which
// the kernel marks modified on every change of its counters, rather than
// reading it five times a second: every container of every pod waits
// here for its whole life, and under TCG each read woke the idle guest
// (two containers of an idle CRI pod: ten wake-ups a second).
func (s *Service) WaitOOM(ctx context.Context, req *api.WaitOOMRequest) (*api.OOMResponse, error) {
	var events *fileWatch
	defer func() {
		if events != nil {
			events.close()
		}
	}()
	for {
		c, err := s.get(req.ContainerId)
		if err != nil {
			return nil, toGRPC(err)
		}
		wait := oomPollInterval
		if dir := c.cgroupPaths[""]; dir != "" {
			path := filepath.Join(dir, "memory.events")
			if events == nil {
				events = newFileWatch(path)
			}
			// Watch before reading, so that a kill between the read
			// and the wait still wakes it.
			if events.ok() {
				wait = oomBackstop
			}
			if n, ok := oomKillCount(dir); ok && n > req.After {
				return &api.OOMResponse{OomKillCount: n}, nil
			}
		}
		var changed <-chan struct{} // nil (never ready) without a watch
		if events != nil {
			changed = events.changed
		}
		select {
		case <-ctx.Done():
			return nil, toGRPC(ctx.Err())
		case <-changed:
		case <-time.After(wait):
		}
	}
}

// oomKillCount reads the oom_kill counter of the cgroup v2 directory dir
// (false without one, e.g. a pod holder, or if memory.events is
// unreadable).
func oomKillCount(dir string) (uint64, bool) {
	if dir == "" {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(dir, "memory.events"))
	if err != nil {
		return 0, false
	}
	return parseFlatKeyed(strings.NewReader(string(b)))["oom_kill"], true
}

// mountPodShm mounts the pod's shared /dev/shm tmpfs the first time a
// container binds it (see oci.GuestPodShm).
func mountPodShm(mounts []specs.Mount) error {
	for _, m := range mounts {
		if m.Destination != "/dev/shm" || !strings.HasPrefix(m.Source, oci.GuestPodShmDir+"/") {
			continue
		}
		if mounted, _ := mountinfo.Mounted(m.Source); mounted {
			continue
		}
		if err := os.MkdirAll(m.Source, 0o1777); err != nil {
			return err
		}
		if err := unix.Mount("shm", m.Source, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
			return fmt.Errorf("mount pod /dev/shm at %s: %w", m.Source, err)
		}
	}
	return nil
}
