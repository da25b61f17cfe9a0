// Package shim is containerd's runtime v2 shim for Berth
// (io.containerd.berth.v2): the task service containerd talks to, and the
// manager that starts one shim process per pod.
//
// One shim serves one pod and owns its VM. The pod's sandbox (pause)
// container boots the VM; CRI app containers, found by the
// io.kubernetes.cri.sandbox-id annotation, join it; deleting the sandbox
// container ends the VM, and the shim exits once containerd has deleted
// every task. A container without CRI annotations (plain `ctr run`) is its
// own sandbox and gets its own VM.
//
// Errors are classified with errdefs inside and turned into gRPC status
// codes in exactly one place, the RPC methods here (toGRPC). The shim never
// exits because of bad input or configuration: a configuration error is
// returned by every Create.
package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/stats"
	"github.com/berth-runtime/berth/internal/vmm/drivers"
)

// exitStatusVMGone is reported for processes whose VM died under them: they
// were killed, as far as anyone can tell.
const exitStatusVMGone = 128 + uint32(syscall.SIGKILL)

// service implements containerd's task API for one pod.
type service struct {
	ctx       context.Context
	publisher shim.Publisher
	shutdown  shutdown.Service
	events    chan event
	// eventsMu orders sends before the close at shutdown (closeEvents):
	// a send racing with close is a data race even when recovered.
	eventsMu     sync.RWMutex
	eventsClosed bool

	cfg    *config.Config
	cfgErr error
	// boot starts a pod's VM (bootSandbox; a fake in tests).
	boot bootFunc

	mu sync.Mutex
	// booting is closed when a boot of the pod's VM in progress ends.
	booting   chan struct{}
	sb        podVM
	sandboxID string
	// podCfg is the configuration the pod's VM was booted with (its
	// sandbox container's, annotations applied); requests that carry no
	// configuration of their own (Update, Delete) use it.
	podCfg     *config.Config
	containers map[string]*container

	// sizeMu serializes sizing the pod's VM: a target is computed from
	// the containers' limits and resized to under it, and growFor
	// records a container's limit before releasing it. Without it a
	// shrink after one container's delete, computed before a new
	// container's grow, could land after that grow and take the new
	// container's memory away.
	sizeMu sync.Mutex
	// shrinkMu guards shrinks, which stop the shrinks that hold or
	// wait for sizeMu: a grow does not wait behind a shrink the guest
	// cannot finish yet (memory still in use), which holds sizeMu until
	// it settles (sandbox's shrinkSettle). A shrink registers before it
	// asks for sizeMu, so one still waiting for it is stopped too and
	// gives way as soon as it gets it.
	shrinkMu   sync.Mutex
	shrinks    map[uint64]context.CancelCauseFunc
	nextShrink uint64
}

type event struct {
	topic string
	value any
}

// newService builds the task service. The configuration is loaded here
// once; an invalid one is kept as an error for Create to return.
func newService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) *service {
	s := &service{
		ctx:        ctx,
		publisher:  publisher,
		shutdown:   sd,
		events:     make(chan event, 128),
		containers: map[string]*container{},
	}
	s.cfg, s.cfgErr = loadConfig()
	s.boot = s.bootSandbox
	go s.forwardEvents()
	sd.RegisterCallback(s.closeEvents)
	return s
}

// closeEvents ends forwardEvents at shutdown; later events are dropped.
func (s *service) closeEvents(context.Context) error {
	s.eventsMu.Lock()
	defer s.eventsMu.Unlock()
	if !s.eventsClosed {
		s.eventsClosed = true
		close(s.events)
	}
	return nil
}

// loadConfig reads Berth's configuration as the CLI does: BERTH_CONFIG (or
// the default path) and BERTH_STATE_DIR, inherited from containerd's
// environment.
func loadConfig() (*config.Config, error) {
	return config.Load(os.Getenv("BERTH_CONFIG"), config.Overrides{StateDir: os.Getenv("BERTH_STATE_DIR"), Host: sandbox.HostFacts()})
}

// configFor is the configuration a create uses: the file named by the
// runtime's ConfigPath option when containerd passes one (`ctr run
// --runtime-config-path`, or `ConfigPath` in a CRI runtime's options, as
// Kata does), so that one host can offer several configurations as
// several runtime classes; otherwise the shim's own. Options are set by the
// node's administrator, not by pods.
func (s *service) configFor(r *taskAPI.CreateTaskRequest) (*config.Config, error) {
	path, err := requestConfigPath(r)
	if err != nil {
		return nil, err
	}
	if path != "" {
		return loadConfigPath(path)
	}
	if s.cfgErr != nil {
		return nil, s.cfgErr
	}
	if s.cfg == nil {
		// Never reached: newService sets one of the two.
		return nil, fmt.Errorf("no configuration loaded: %w", config.ErrInvalid)
	}
	return s.cfg, nil
}

// requestConfigPath is the ConfigPath runtime option of a create, "" when
// there is none.
func requestConfigPath(r *taskAPI.CreateTaskRequest) (string, error) {
	if r.Options == nil || r.Options.GetTypeUrl() == "" {
		return "", nil
	}
	v, err := typeurl.UnmarshalAny(r.Options)
	if err != nil {
		return "", fmt.Errorf("decode runtime options: %w", err)
	}
	if o, ok := v.(*runtimeoptions.Options); ok {
		return o.ConfigPath, nil
	}
	return "", nil
}

// loadConfigPath loads a ConfigPath configuration exactly like the
// default: with the host's facts, so that a combination this host cannot
// run fails here, naming the key, rather than when a sandbox starts.
func loadConfigPath(path string) (*config.Config, error) {
	return config.Load(path, config.Overrides{StateDir: os.Getenv("BERTH_STATE_DIR"), Host: sandbox.HostFacts()})
}

// forwardEvents publishes events in the order they were sent, so that a
// task's exit is never seen before its start.
func (s *service) forwardEvents() {
	ns, _ := namespaces.Namespace(s.ctx)
	ctx := namespaces.WithNamespace(context.Background(), ns)
	for e := range s.events {
		if err := s.publisher.Publish(ctx, e.topic, e.value); err != nil {
			log.G(ctx).WithError(err).WithField("topic", e.topic).Error("publish event")
		}
	}
	s.publisher.Close()
}

func (s *service) send(topic string, v any) {
	s.eventsMu.RLock()
	defer s.eventsMu.RUnlock()
	if s.eventsClosed {
		return // the shim is shutting down
	}
	s.events <- event{topic, v} // forwardEvents drains until closed
}

func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(err)
}

func (s *service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.process(execID)
	return c, p, err
}

// vmmPid is what Berth reports as a task's pid: guest pids mean nothing
// on the host, the VMM's pid does (it is what cgroups and `ps` show).
func (s *service) vmmPid() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sb == nil {
		return 0
	}
	return uint32(s.sb.VMMPid())
}

// Create creates a container; the first one boots the pod's VM.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	pid, err := s.create(ctx, r)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &taskAPI.CreateTaskResponse{Pid: pid}, nil
}

func (s *service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ uint32, retErr error) {
	base, err := s.configFor(r)
	if err != nil {
		return 0, fmt.Errorf("berth configuration: %v: %w", err, errdefs.ErrFailedPrecondition)
	}
	if r.Checkpoint != "" {
		return 0, fmt.Errorf("checkpoint restore: %w", errdefs.ErrNotImplemented)
	}
	// `shim delete` runs in a fresh process that containerd gives no
	// runtime options: it finds the request's configuration (its run_dir)
	// through the bundle.
	if path, _ := requestConfigPath(r); path != "" {
		if err := recordConfigPath(r.Bundle, path); err != nil {
			return 0, err
		}
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return 0, err
	}
	sandboxID, isSandbox := oci.PodInfo(r.ID, spec.Annotations)
	if err := validateIDs(r.ID, sandboxID); err != nil {
		return 0, err
	}
	if err := oci.CheckHostNamespaces(spec, !isSandbox); err != nil {
		return 0, fmt.Errorf("%v: %w", err, errdefs.ErrNotImplemented)
	}
	// Pod annotations are untrusted: only allow-listed keys pass.
	cfg, err := base.WithAnnotations(spec.Annotations)
	if err != nil {
		return 0, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}

	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("container %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	c := &container{id: r.ID, bundle: r.Bundle, isSandbox: isSandbox, podSandbox: oci.IsPodSandbox(spec.Annotations), execs: map[string]*process{},
		ownPIDNS: oci.HasOwnNamespace(spec, specs.PIDNamespace)}
	// Reserve the id; slow work happens without the lock.
	s.containers[r.ID] = c
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()

	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(r.Bundle, rootfs)
	}
	if len(r.Rootfs) > 0 {
		var mounts []mount.Mount
		for _, m := range r.Rootfs {
			mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		rootfs = filepath.Join(r.Bundle, "rootfs")
		if err := os.MkdirAll(rootfs, 0o711); err != nil {
			return 0, err
		}
		if err := mount.All(mounts, rootfs); err != nil {
			return 0, fmt.Errorf("mount rootfs: %w", err)
		}
		c.mountedRootfs = rootfs
		defer func() {
			if retErr != nil {
				mount.UnmountAll(rootfs, 0)
			}
		}()
	}

	sb, sandboxPid, err := s.sandboxFor(ctx, cfg, sandboxID, isSandbox, spec)
	if err != nil {
		return 0, err
	}
	pidNSPid, err := s.pidNamespaceTarget(r.ID, isSandbox, spec)
	if err != nil {
		s.destroySandboxIfEmpty(ctx, c)
		return 0, err
	}
	var limit int64
	if spec.Linux != nil {
		limit = memoryLimit(spec.Linux.Resources)
	}
	if err := s.growFor(ctx, cfg, sb, c, limit); err != nil {
		s.destroySandboxIfEmpty(ctx, c)
		return 0, err
	}
	ns, _ := namespaces.Namespace(ctx)
	paths := stdioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}
	hio, err := openStdio(ctx, paths, r.ID, ns)
	if err != nil {
		s.destroySandboxIfEmpty(ctx, c)
		return 0, err
	}
	sp, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
		ID: r.ID, Spec: spec, RootfsDir: rootfs, SandboxInitPid: sandboxPid, PIDNamespacePid: pidNSPid, IO: hio.IO,
		CgroupsPath: oci.CgroupsPath(spec, ns, r.ID),
	})
	if err != nil {
		hio.Close()
		s.destroySandboxIfEmpty(ctx, c)
		return 0, err
	}
	c.init = newProcess(r.ID, "", paths, hio, sp)
	go s.waitProcess(c, c.init)
	go s.watchOOM(sb, c)

	pid := s.vmmPid()
	s.send(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         pid,
	})
	return pid, nil
}

// sandboxFor returns the pod's VM, booting it for the pod's first
// container. It also returns the guest pid of the sandbox container, whose
// namespaces app containers join.
//
// VFIO devices of the container that boots the VM are cold-plugged when
// devices.cold_plug_vfio says so; every other device is hot-plugged when
// its container is created, and the container gets both. The pod's host
// cgroup is the sandbox container's linux.cgroupsPath.
//
// The boot takes seconds and is done without the service's lock (every
// other request would wait for it); a second create meanwhile waits for
// the boot's outcome.
func (s *service) sandboxFor(ctx context.Context, cfg *config.Config, sandboxID string, isSandbox bool, spec *specs.Spec) (podVM, uint32, error) {
	s.mu.Lock()
	for s.booting != nil {
		ch := s.booting
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
		s.mu.Lock()
	}
	locked := true
	defer func() {
		if locked {
			s.mu.Unlock()
		}
	}()
	if s.sb != nil {
		if sandboxID != s.sandboxID {
			return nil, 0, fmt.Errorf("this shim serves sandbox %q, not %q: %w", s.sandboxID, sandboxID, errdefs.ErrInvalidArgument)
		}
		var pid uint32
		if sc, ok := s.containers[sandboxID]; ok && sc.init != nil && !isSandbox {
			pid = sc.init.sp.Pid()
		}
		return s.sb, pid, nil
	}
	if !isSandbox {
		return nil, 0, fmt.Errorf("sandbox %q is not running in this shim: %w", sandboxID, errdefs.ErrFailedPrecondition)
	}
	netns, err := sandbox.PodNetNS(spec)
	if err != nil {
		return nil, 0, err
	}
	booting := make(chan struct{})
	s.booting = booting
	s.mu.Unlock()
	locked = false
	defer func() {
		s.mu.Lock()
		s.booting = nil
		s.mu.Unlock()
		close(booting)
	}()
	cold, err := sandbox.ColdPlugVFIO(cfg, spec)
	if err != nil {
		return nil, 0, err
	}
	sandbox.CleanupStale(cfg.RunDir)
	ns, _ := namespaces.Namespace(ctx)
	cgroupsPath := oci.CgroupsPath(spec, ns, sandboxID)
	sb, err := s.boot(ctx, cfg, sandbox.Options{ID: sandboxID, CgroupsPath: cgroupsPath, ColdPlugVFIO: cold, NetNSPath: netns})
	if err != nil {
		return nil, 0, fmt.Errorf("start sandbox VM: %w", err)
	}
	s.mu.Lock()
	s.sb, s.sandboxID, s.podCfg = sb, sandboxID, cfg
	s.mu.Unlock()
	go s.watchVM(sb)
	sb.SetMemoryFloor(func() int { return s.memoryFloor(sb) })
	return sb, 0, nil
}

// bootSandbox boots a real sandbox with the driver cfg selects and serves
// its metrics.
func (s *service) bootSandbox(ctx context.Context, cfg *config.Config, opts sandbox.Options) (podVM, error) {
	driver, err := drivers.For(cfg)
	if err != nil {
		return nil, err
	}
	if opts.Accel, err = sandbox.ResolveAccel(ctx, cfg, driver); err != nil {
		return nil, err
	}
	opts.Driver = driver
	sb, err := sandbox.Create(ctx, cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := serveMetrics(s.ctx, sb); err != nil {
		// Metrics are an observer's convenience; the pod runs without.
		log.G(ctx).WithError(err).Warn("serve sandbox metrics")
	}
	return sandboxPod{sb}, nil
}

// watchVM notices the VM dying on its own (killed, crashed, powered off):
// every process that has not exited is reported as killed, so containerd
// learns of it at once.
func (s *service) watchVM(sb podVM) {
	<-sb.Done()
	s.mu.Lock()
	if s.sb == sb {
		log.G(s.ctx).WithError(sb.VMError()).Warn("sandbox VM exited unexpectedly")
	}
	var procs []*process
	for _, c := range s.containers {
		if c.init != nil {
			procs = append(procs, c.init)
		}
		for _, e := range c.execs {
			procs = append(procs, e)
		}
	}
	s.mu.Unlock()
	for _, p := range procs {
		if !p.hasExited() {
			log.G(s.ctx).WithError(sb.VMError()).WithField("container", p.containerID).WithField("exec", p.execID).
				Warnf("reporting the process exited with status %d: its VM is gone", exitStatusVMGone)
		}
		s.markExited(p, exitStatusVMGone, time.Now())
	}
}

// destroySandboxIfEmpty ends a VM that was booted for a container whose
// creation then failed.
func (s *service) destroySandboxIfEmpty(ctx context.Context, failed *container) {
	s.mu.Lock()
	sb := s.sb
	empty := true
	for id, c := range s.containers {
		if id != failed.id && c.init != nil {
			empty = false
		}
	}
	if empty {
		s.sb = nil
	}
	s.mu.Unlock()
	if empty && sb != nil {
		sb.Destroy(context.WithoutCancel(ctx))
	}
}

// waitProcess waits for a process and records its exit. An init's exit is
// published only after the exits of its execs (which die with it), the
// order containerd expects.
//
// The host ends of the process's stdio are closed as soon as its output has
// been drained, before the exit is published, as runc's shim does: the
// reader of a FIFO (CRI's ExecSync and container log copier) waits for EOF
// before it acts on the exit, and would otherwise wait until Delete, which
// CRI only sends after that EOF.
func (s *service) waitProcess(c *container, p *process) {
	st, err := p.sp.Wait(s.ctx)
	if err != nil {
		if sandbox.ErrVMExited(err) {
			p.closeIO()
			s.markExited(p, exitStatusVMGone, time.Now())
		}
		// Otherwise the process was deleted before it ran, or the shim
		// is shutting down: nothing to report.
		return
	}
	if p.execID == "" {
		for _, e := range c.execList() {
			select {
			case <-e.exited:
			case <-time.After(2 * time.Second):
			}
		}
		s.checkOOMBeforeExit(c, st.OOMKills)
	}
	p.closeIO()
	s.markExited(p, st.Code, st.ExitedAt)
	if p.execID == "" {
		s.releaseDevices(c)
	}
}

// releaseDevices unplugs a container's disks and VFIO functions once its
// init has exited, after TaskExit is published (an unplug takes ~0.1 s
// and waits for the guest): nothing can use them any more, and the host
// gets its devices back without waiting for containerd's Delete, which
// CRI may send much later. Delete unplugs again, which is then a no-op.
func (s *service) releaseDevices(c *container) {
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil || isDone(sb.Done()) {
		return
	}
	if err := sb.ReleaseDevices(s.ctx, c.id); err != nil {
		log.G(s.ctx).WithError(err).WithField("container", c.id).Warn("unplug devices of an exited container")
	}
}

// watchOOM publishes TaskOOM each time the guest kernel OOM-kills a
// process of the container, until the container is deleted or the VM ends
// (paced against a hostile guest: oom.go).
func (s *service) watchOOM(sb podVM, c *container) {
	watchOOM(s.ctx, sb, c.id, defaultOOMPace, c.oomKills, func(n uint64) { s.reportOOM(c, n) })
}

// reportOOM publishes TaskOOM if the kill count n is news.
func (s *service) reportOOM(c *container, n uint64) {
	if c.updateOOMKills(n) {
		s.send(runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: c.id})
	}
}

// checkOOMBeforeExit reads the kill count once more when an init exits: an
// OOM kill usually is the exit, and the watcher may not have polled since.
// Reporting it here puts TaskOOM before TaskExit, as runc's shim does.
// The guest's Wait answer carries the count (atExit); only if it does not
// is it read with ContainerStats, a round trip in which the guest reads
// every statistics file of the container (50-70 ms under TCG, which every
// exit paid before TaskExit).
func (s *service) checkOOMBeforeExit(c *container, atExit *uint64) {
	if atExit != nil {
		s.reportOOM(c, *atExit)
		return
	}
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	defer cancel()
	if st, err := sb.ContainerStats(ctx, c.id); err == nil {
		s.reportOOM(c, st.MemoryOomKillEvents)
	}
}

// markExited records an exit once and publishes TaskExit for it.
func (s *service) markExited(p *process, status uint32, at time.Time) {
	if !p.setExited(status, at) {
		return
	}
	s.send(runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: p.containerID,
		ID:          p.id(),
		Pid:         s.vmmPid(),
		ExitStatus:  status,
		ExitedAt:    timestamppb.New(at),
	})
}

// Start runs a container's program or an exec'd process.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := p.start(ctx, c.init); err != nil {
		return nil, toGRPC(err)
	}
	pid := s.vmmPid()
	if r.ExecID == "" {
		s.send(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: c.id, Pid: pid})
	} else {
		s.send(runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: r.ExecID, Pid: pid})
	}
	return &taskAPI.StartResponse{Pid: pid}, nil
}

// Delete removes an exec, or a container (and, for the pod's sandbox
// container, the VM).
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := p.do(opDelete); err != nil {
		return nil, toGRPC(err)
	}
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	vmAlive := sb != nil && !isDone(sb.Done())
	if r.ExecID != "" {
		if vmAlive {
			if err := sb.DeleteExec(ctx, c.id, r.ExecID); err != nil {
				log.G(ctx).WithError(err).Warn("delete exec in guest")
			}
		}
		p.closeIO()
		c.removeExec(r.ExecID)
	} else {
		// Exec'd processes die with the container; drop them too.
		for _, e := range c.execList() {
			e.closeIO()
		}
		s.mu.Lock()
		delete(s.containers, c.id)
		endVM := c.isSandbox || len(s.containers) == 0
		if endVM {
			s.sb = nil
		}
		s.mu.Unlock()
		if vmAlive {
			// The last container's VM is destroyed next, and the
			// agent's Shutdown kills what is left: only the host's
			// side needs undoing before the reply.
			release := sb.DeleteContainer
			if endVM {
				release = sb.ReleaseContainer
			}
			if err := release(ctx, c.id); err != nil {
				log.G(ctx).WithError(err).WithField("container", c.id).Warn("delete container")
			}
		}
		p.closeIO()
		if c.mountedRootfs != "" {
			if err := mount.UnmountAll(c.mountedRootfs, 0); err != nil {
				log.G(ctx).WithError(err).Warn("unmount rootfs")
			}
		}
		if endVM && sb != nil {
			// Publish the delete before the slow VM teardown.
			defer sb.Destroy(context.WithoutCancel(ctx))
		} else if vmAlive && (c.memLimit() > 0 || sb.ElasticEnabled()) {
			// After the reply, not before it: a guest that cannot give
			// the memory back yet (still in use) holds a shrink for
			// seconds, and containerd's exit handler, which deletes the
			// task and which CRI's StopContainer waits for, gives up
			// after 10 s.
			go s.shrinkToFit(context.WithoutCancel(ctx), s.podConfig(), sb)
		}
	}
	status, at := p.exit()
	pid := s.vmmPid()
	if r.ExecID == "" {
		s.send(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
			ContainerID: c.id, ID: c.id, Pid: pid, ExitStatus: status, ExitedAt: timestamppb.New(at),
		})
	}
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: status, ExitedAt: timestamppb.New(at)}, nil
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Exec adds a process to a running container.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	if err := s.exec(ctx, r); err != nil {
		return nil, toGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *service) exec(ctx context.Context, r *taskAPI.ExecProcessRequest) error {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return err
	}
	if err := oci.ValidateID("exec id", r.ExecID); err != nil {
		return err
	}
	if _, err := c.process(r.ExecID); err == nil {
		return fmt.Errorf("exec %q: %w", r.ExecID, errdefs.ErrAlreadyExists)
	}
	// Refused before the guest is asked: runc's shim refuses an exec into
	// a paused or stopped task at once, and the guest would hang (frozen
	// cgroup) or fail obscurely (the init's namespaces are gone).
	init, err := c.process("")
	if err != nil {
		return err
	}
	if err := init.do(opExec); err != nil {
		return err
	}
	v, err := typeurl.UnmarshalAny(r.Spec)
	if err != nil {
		return fmt.Errorf("decode exec spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	procSpec, ok := v.(*specs.Process)
	if !ok {
		return fmt.Errorf("exec spec is %T, not an OCI process: %w", v, errdefs.ErrInvalidArgument)
	}
	procSpec.ApparmorProfile, procSpec.SelinuxLabel = "", ""
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil {
		return fmt.Errorf("sandbox VM is not running: %w", errdefs.ErrFailedPrecondition)
	}
	ns, _ := namespaces.Namespace(ctx)
	paths := stdioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}
	hio, err := openStdio(ctx, paths, r.ID, ns)
	if err != nil {
		return err
	}
	sp, err := sb.Exec(ctx, c.id, r.ExecID, procSpec, hio.IO)
	if err != nil {
		hio.Close()
		return err
	}
	p := newProcess(c.id, r.ExecID, paths, hio, sp)
	c.addExec(p)
	go s.waitProcess(c, p)
	s.send(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return nil
}

// ResizePty resizes a process's terminal.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := p.sp.Resize(ctx, r.Width, r.Height); err != nil {
		return nil, toGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// State reports a process.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	status, at := p.exit()
	return &taskAPI.StateResponse{
		ID:         p.id(),
		Bundle:     c.bundle,
		Pid:        s.vmmPid(),
		Status:     p.status(),
		Stdin:      p.paths.stdin,
		Stdout:     p.paths.stdout,
		Stderr:     p.paths.stderr,
		Terminal:   p.paths.terminal,
		ExitStatus: status,
		ExitedAt:   timestamppb.New(at),
		ExecID:     r.ExecID,
	}, nil
}

// Pause freezes a container.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, true)
}

// Resume thaws a container.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, false)
}

// setPaused freezes or thaws a container. Its init goes through pausing
// or resuming while the guest works (state.go).
func (s *service) setPaused(ctx context.Context, id string, paused bool) (*emptypb.Empty, error) {
	_, init, err := s.getProcess(id, "")
	if err != nil {
		return nil, toGRPC(err)
	}
	begin, done, failed := init.beginPause, opPaused, opPauseFailed
	topic, ev := runtime.TaskPausedEventTopic, any(&eventstypes.TaskPaused{ContainerID: id})
	if !paused {
		begin, done, failed = func() error { return init.do(opResume) }, opResumed, opResumeFailed
		topic, ev = runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: id}
	}
	if err := begin(); err != nil {
		return nil, toGRPC(err)
	}
	_, sb, err := s.containerAndVM(id)
	if err == nil {
		if paused {
			err = sb.PauseContainer(ctx, id)
		} else {
			err = sb.ResumeContainer(ctx, id)
		}
	}
	if err != nil {
		init.do(failed)
		return nil, toGRPC(err)
	}
	init.do(done)
	s.send(topic, ev)
	return &emptypb.Empty{}, nil
}

func (s *service) containerAndVM(id string) (*container, podVM, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil || isDone(sb.Done()) {
		return nil, nil, fmt.Errorf("sandbox VM is not running: %w", errdefs.ErrFailedPrecondition)
	}
	return c, sb, nil
}

// Kill signals a process. Signalling one that has already exited
// succeeds: CRI retries kills and expects idempotency.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := p.do(opKill); err != nil {
		return nil, toGRPC(err)
	}
	if p.hasExited() {
		return &emptypb.Empty{}, nil
	}
	if err := p.sp.Kill(ctx, syscall.Signal(r.Signal), r.All); err != nil {
		if p.hasExited() || sandbox.ErrVMExited(err) {
			return &emptypb.Empty{}, nil
		}
		return nil, toGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// Pids reports the VMM: the processes of a Berth container run in a VM
// and have no host pids.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	if _, err := s.getContainer(r.ID); err != nil {
		return nil, toGRPC(err)
	}
	return &taskAPI.PidsResponse{Processes: []*task.ProcessInfo{{Pid: s.vmmPid()}}}, nil
}

// CloseIO closes a process's stdin as runc's shim does: it closes the
// shim's hold on the stdin FIFO, and the program reads EOF once what the
// clients wrote before closing their ends has reached it. Closing stdin in
// the guest at once would drop data still on its way (containerd's CRI
// closes its end and calls CloseIO right after writing the last byte:
// `kubectl cp` into a pod lost its tar stream).
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	if r.Stdin && p.io != nil {
		p.io.CloseStdinHold()
	}
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported: a VM's containers cannot be checkpointed
// with CRIU from the host.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, toGRPC(fmt.Errorf("checkpoint: %w", errdefs.ErrNotImplemented))
}

// Update changes a container's resources inside the guest.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, init, err := s.getProcess(r.ID, "")
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := init.do(opUpdate); err != nil {
		return nil, toGRPC(err)
	}
	_, sb, err := s.containerAndVM(r.ID)
	if err != nil {
		return nil, toGRPC(err)
	}
	v, err := typeurl.UnmarshalAny(r.Resources)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("decode resources: %v: %w", err, errdefs.ErrInvalidArgument))
	}
	res, ok := v.(*specs.LinuxResources)
	if !ok {
		return nil, toGRPC(fmt.Errorf("resources are %T, not linux resources: %w", v, errdefs.ErrInvalidArgument))
	}
	// In-place resize: grow the VM before raising the container's limit,
	// shrink it after lowering.
	newLimit, oldLimit := memoryLimit(res), c.memLimit()
	if res.Memory != nil && res.Memory.Limit != nil {
		if err := s.growFor(ctx, s.podConfig(), sb, c, newLimit); err != nil {
			return nil, toGRPC(err)
		}
	}
	if err := sb.UpdateContainer(ctx, r.ID, res); err != nil {
		return nil, toGRPC(err)
	}
	if res.Memory != nil && res.Memory.Limit != nil {
		c.setMemLimit(newLimit)
		if newLimit < oldLimit {
			s.shrinkToFit(ctx, s.podConfig(), sb)
		}
	}
	return &emptypb.Empty{}, nil
}

// Wait blocks until a process exits.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, toGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, toGRPC(ctx.Err())
	}
	status, at := p.exit()
	return &taskAPI.WaitResponse{ExitStatus: status, ExitedAt: timestamppb.New(at)}, nil
}

// Stats returns a container's cgroup metrics from inside the guest, in
// containerd's cgroup v2 or v1 metrics type, whichever the guest booted
// with: containerd's CRI plugin tells them apart by type and computes the
// working set accordingly.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	_, sb, err := s.containerAndVM(r.ID)
	if err != nil {
		return nil, toGRPC(err)
	}
	st, err := sb.ContainerStats(ctx, r.ID)
	if err != nil {
		return nil, toGRPC(err)
	}
	var m any = stats.CgroupV2Metrics(st)
	if st.CgroupVersion == 1 {
		m = stats.CgroupV1Metrics(st)
	}
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

// Connect returns the shim's and the VMM's pids.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: s.vmmPid()}, nil
}

// Shutdown ends the shim once it serves no container.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	if len(s.containers) > 0 {
		s.mu.Unlock()
		return &emptypb.Empty{}, nil
	}
	sb := s.sb
	s.sb = nil
	s.mu.Unlock()
	if sb != nil {
		sb.Destroy(context.WithoutCancel(ctx))
	}
	s.shutdown.Shutdown()
	return &emptypb.Empty{}, nil
}

// readSpec reads the bundle's config.json.
func readSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read OCI spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("decode OCI spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if spec.Root == nil || spec.Process == nil {
		return nil, fmt.Errorf("OCI spec needs root and process: %w", errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}
