// Package sandbox owns one pod's VM on the host: it starts virtiofsd and
// QEMU, waits for berth-agent, places container root file systems in the
// shared directory, runs containers and processes through the agent, and
// tears all of it down exactly once.
//
// Everything a sandbox creates on the host lives under one directory,
// <run_dir>/sandboxes/<id>: sockets, the console log, the virtio-fs shared
// directory (a mount) and the owner's pid. Destroy removes it; CleanupStale
// removes what a killed owner left behind. Creation is undone step by step
// by a cleanup stack if any step fails, so a failed Create leaves nothing.
package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/bootslot"
	"github.com/berth-runtime/berth/internal/cgroup"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/device"
	"github.com/berth-runtime/berth/internal/hostmount"
	"github.com/berth-runtime/berth/internal/memory"
	"github.com/berth-runtime/berth/internal/network"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/transport"
	"github.com/berth-runtime/berth/internal/vmm"
)

// Options size one sandbox.
type Options struct {
	// ID names the sandbox; it must be unique on the host.
	ID string
	// VCPUs and MemoryMiB override the configured defaults when non-zero.
	VCPUs     int
	MemoryMiB int
	// Driver starts the VM (hypervisor.driver, chosen once by the
	// caller: see internal/vmm/drivers). Required.
	Driver vmm.Driver
	// Accel is the accelerator to use; the caller resolves "auto" once
	// (ResolveAccel) so that every sandbox does not probe again.
	Accel vmm.Accel
	// CgroupsPath is the host cgroup containerd asked for the pod (the
	// sandbox container's linux.cgroupsPath, see oci.CgroupsPath); ""
	// when there is none. CgroupPath says what becomes of it.
	CgroupsPath string
	// ColdPlugVFIO are VFIO groups to put on QEMU's command line (see
	// ColdPlugVFIO); the container that asked for them finds them
	// attached, other devices are hot-plugged.
	ColdPlugVFIO []device.VFIOGroup
	// NetNSPath is the pod's network namespace on the host (see
	// PodNetNS); "" gives a VM without NICs.
	NetNSPath string
}

// Sandbox is one VM and the host resources that serve it.
type Sandbox struct {
	id  string
	cfg *config.Config
	dir string

	vmm       vmm.VM
	driver    string // hypervisor.driver, for errors
	virtiofsd *virtiofsd
	// cgroup holds the VMM and virtiofsd; never nil once Create
	// succeeded (cgroup.manager = "none" gives a no-op one).
	cgroup cgroup.Cgroup
	pod    podCgroups // the containers' own host cgroups, if any
	dialer transport.Dialer
	rpc    *ttrpc.Client
	agent  api.AgentService
	info   *api.InfoResponse

	// devices tracks PCIe ports and which container holds which device;
	// nil on machines without Berth's PCIe topology (microvm, virt).
	devices     *device.Manager
	hostDevices device.Host
	// net is the pod network connected to the VM's NICs; nil without one.
	net *network.Pod
	// forward serves CRI PortForward; nil without a pod network.
	forward *network.LoopbackForwarder

	mu sync.Mutex
	// tree is the host-only mount tree and its read-only share.
	tree       *hostmount.Tree
	mounts     map[string][]hostmount.Mount // container id -> binds, in mount order
	volumes    sharedVolumes                // host sources bound once for every container that mounts them
	vmMiB      int                          // the VM's memory, which sizes the cgroup
	lastMemMiB [2]int                       // current and requested memory at the last metrics sample
	cpu        map[string]cpuLimit          // container id -> its CPU limits

	memory  memoryState
	elastic *elasticController // grows and shrinks the VM on demand (elastic.go)
	mgmt    io.Closer          // management API server

	// failure is why a helper process took the sandbox down (watch.go).
	failure failure
	// memFloor is what a resize must leave (floor.go).
	memFloor atomic.Pointer[func() int]

	// confinement is how QEMU runs; vmmUser its uid (nil: root).
	confinement config.VMMConfinement
	vmmUser     *vmmUser
	secret      []byte // the sandbox secret every agent stream starts with

	destroyOnce sync.Once
	destroyErr  error
}

// Paths of a sandbox's files inside its directory.
const (
	sharedDirName = "shared"
	// mountsDirName is the host-only tree where binds are made; the
	// guest sees it only through the read-only shared directory.
	mountsDirName  = "mounts"
	consoleLogName = "console.log"
	qmpSocketName  = vmmDirName + "/qmp.sock"
	agentSockName  = vmmDirName + "/agent.sock"
	fsSocketName   = "virtiofsd.sock"
	ownerFileName  = "owner.pid"
	vmmPidFileName = "vmm.pid"
	secretFileName = "secret"
	// MetricsSocketName is where the shim serves the sandbox's Prometheus
	// metrics (docs/metrics.md); berth monitor looks for it.
	MetricsSocketName = "metrics.sock"
)

// Dir returns the directory of sandbox id under runDir. Long ids (CRI's are
// 64 hex digits) are shortened to a hash: the directory holds unix sockets,
// whose paths may not exceed 107 bytes.
func Dir(runDir, id string) string {
	name := id
	if len(id) > 32 {
		sum := sha256.Sum256([]byte(id))
		name = hex.EncodeToString(sum[:16])
	}
	return filepath.Join(runDir, "sandboxes", name)
}

// maxSocketPath is the longest unix socket path the kernel accepts.
const maxSocketPath = 107

// Create boots a sandbox and returns once its agent answers.
func Create(ctx context.Context, cfg *config.Config, opts Options) (_ *Sandbox, retErr error) {
	if err := validateID(opts.ID); err != nil {
		return nil, err
	}
	if opts.Driver == nil {
		return nil, fmt.Errorf("sandbox %q: no hypervisor driver: %w", opts.ID, errdefs.ErrInvalidArgument)
	}
	s := &Sandbox{id: opts.ID, driver: opts.Driver.Name(), cfg: cfg, dir: Dir(cfg.RunDir, opts.ID), mounts: map[string][]hostmount.Mount{}, cpu: map[string]cpuLimit{}, hostDevices: device.Sysfs{}}
	log := logrus.WithField("sandbox", s.id)

	var undo cleanupStack
	defer func() {
		if retErr != nil {
			undo.run()
		}
	}()

	if longest := s.path(fsSocketName); len(longest) > maxSocketPath {
		return nil, fmt.Errorf("socket path %s is longer than %d bytes: use a shorter run_dir in the configuration", longest, maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(s.dir), 0o711); err != nil {
		return nil, fmt.Errorf("create %s: %w (check run_dir in the configuration)", filepath.Dir(s.dir), err)
	}
	// 0711: QEMU's uid reaches the few paths it needs (confine.go).
	if err := os.Mkdir(s.dir, 0o711); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("sandbox %q: %w", s.id, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("create sandbox directory: %w", err)
	}
	undo.push(func() { removeDir(s.dir) })
	if err := os.WriteFile(s.path(ownerFileName), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return nil, err
	}
	s.confinement = cfg.Confinement(string(transportKind(cfg.Agent.Transport)), len(opts.ColdPlugVFIO) > 0)
	if s.confinement.Unprivileged {
		u, err := allocateVMMUser(cfg, s.id)
		if err != nil {
			return nil, err
		}
		s.vmmUser = u
		undo.push(u.release) // after QEMU is gone: the stack runs backwards
	}
	if err := s.prepareVMMDir(s.vmmUser); err != nil {
		return nil, err
	}
	secret, err := s.writeSecret()
	if err != nil {
		return nil, err
	}
	s.secret = secret

	shared := s.path(sharedDirName)
	tree, err := hostmount.New(s.path(mountsDirName), shared)
	if err != nil {
		return nil, err
	}
	s.tree = tree
	undo.push(func() { tree.Close() })

	m, err := s.machine(opts)
	if err != nil {
		return nil, err
	}
	s.memory.limits = memoryLayout(cfg, &m)
	// First: hypervisor.kernel_params, which come later, can override it.
	m.KernelParams = kernelTableParams(s.memory.limits.MaxMiB) + " " + m.KernelParams
	topo, cold, err := planTopology(cfg, &m, opts.ColdPlugVFIO)
	if err != nil {
		return nil, err
	}
	if err := s.attachNetwork(ctx, opts.NetNSPath, &m, &undo); err != nil {
		return nil, err
	}
	// The cgroup exists before the processes it will hold, and is
	// removed after they are gone (the cleanup stack runs backwards).
	cg, err := s.createCgroup(ctx, opts, m.MemoryMiB)
	if err != nil {
		return nil, err
	}
	s.cgroup = cg
	undo.push(func() {
		if err := cg.Delete(context.WithoutCancel(ctx)); err != nil {
			log.WithError(err).Warn("remove sandbox cgroup")
		}
	})

	fsd, err := startVirtiofsd(ctx, cfg.Hypervisor.VirtiofsdPath, s.path(fsSocketName), shared, cfg.Hypervisor.VirtiofsCache, cfg.Hypervisor.VirtiofsXattr, cfg.Hypervisor.LogMaxBytes())
	if err != nil {
		return nil, err
	}
	s.virtiofsd = fsd
	undo.push(func() { fsd.stop() })
	if err := giveToVMM(s.vmmUser, s.path(fsSocketName)); err != nil {
		return nil, err
	}

	log.WithField("driver", s.driver).WithField("accel", m.Accel).WithField("machine", m.Kind).WithField("cgroup", cg.Path()).Debug("starting the VM")
	var cred *syscall.Credential
	if s.vmmUser != nil {
		cred = s.vmmUser.credential(m.Accel)
	}
	log.WithField("unprivileged", s.confinement.Unprivileged).WithField("root_reason", s.confinement.RootReason).WithField("seccomp", m.Seccomp).Debug("qemu confinement")
	slot, err := s.bootSlot(ctx, m.Accel)
	if err != nil {
		return nil, err
	}
	// Held from QEMU's start until the agent answers (or the boot fails).
	defer slot.Release()
	vm, err := opts.Driver.Start(ctx, m, vmm.StartOptions{
		DieWithParent: true,
		Credential:    cred,
		// Into the cgroup before QEMU loads the kernel and the guest
		// touches its memory, so that the guest's RAM is charged there.
		Started: func(pid int) error { return cg.Add(ctx, pid) },
		Batch:   s.cfg.Hypervisor.Batch(m.Accel == vmm.TCG),
	})
	if s.net != nil {
		s.net.CloseTaps() // QEMU holds its own; the taps end with it
	}
	if err != nil {
		return nil, fmt.Errorf("start VM: %w", err)
	}
	s.vmm = vm
	undo.push(func() { vm.Kill() })
	// virtiofsd joins the cgroup only now, while the guest boots: the
	// move (into each cgroup v1 hierarchy) took 6-10 ms, which before
	// QEMU's start delayed the boot. By now virtiofsd has forked its
	// sandboxed child (once QEMU connected) and answered QEMU's
	// vhost-user handshake, so both move; it serves the guest, and
	// allocates for it, once the agent mounts the share, hundreds of
	// ms later.
	if err := addProcessTree(ctx, cg, fsd.cmd.Process.Pid); err != nil {
		return nil, fmt.Errorf("virtiofsd: %w", err)
	}
	if err := s.useCapabilities(vm, m, topo, cold); err != nil {
		return nil, err
	}
	s.watchHelpers(virtiofsdHelper(fsd))
	// Recorded so that a fresh process (containerd's `shim delete` after a
	// shim crash) can find and kill a VM whose owner is gone.
	if err := os.WriteFile(s.path(vmmPidFileName), []byte(strconv.Itoa(vm.Pid())), 0o600); err != nil {
		return nil, err
	}

	if m.Vsock != nil {
		s.dialer = transport.NewVsockDialer(m.Vsock.GuestCID)
	} else {
		s.dialer = transport.NewSerialDialer(s.path(agentSockName))
	}
	// Every stream starts with the sandbox secret (auth.go in transport).
	s.dialer = transport.WithToken(s.dialer, s.secret)
	undo.push(func() { s.dialer.Close() })
	if err := s.connectAgent(ctx); err != nil {
		return nil, err
	}
	slot.Release()
	if err := s.configureGuestNetwork(ctx); err != nil {
		return nil, err
	}
	s.memory.bootMemTotalMiB = int(s.info.MemTotalBytes >> 20)
	s.memory.currentMiB, s.memory.requestedMiB = m.MemoryMiB, m.MemoryMiB
	s.elastic = s.newElastic()
	mgmt, err := s.serveManagement()
	if err != nil {
		return nil, err
	}
	s.mgmt = mgmt
	undo.push(func() { mgmt.Close() })
	log.WithField("kernel", s.info.KernelRelease).WithField("qemu_pid", vm.Pid()).Debug("sandbox ready")
	go s.releaseCgroupWhenVMExits()
	s.startElastic()
	return s, nil
}

// bootSlotDir holds the host-wide boot slots, under run_dir.
const bootSlotDir = "boot-slots"

// bootSlot waits for one of the host's boot slots
// (hypervisor.boot_concurrency); a nil slot means no limit.
func (s *Sandbox) bootSlot(ctx context.Context, accel vmm.Accel) (*bootslot.Slot, error) {
	n := s.cfg.Hypervisor.BootSlots(accel == vmm.TCG)
	if n == 0 {
		return nil, nil
	}
	start := time.Now()
	waited := false
	slot, err := bootslot.Acquire(ctx, filepath.Join(s.cfg.RunDir, bootSlotDir), n, func() {
		waited = true
		logrus.WithField("sandbox", s.id).Infof("waiting to boot: %d VMs of this host are booting (hypervisor.boot_concurrency)", n)
	})
	if err != nil {
		return nil, fmt.Errorf("%w (hypervisor.boot_concurrency = %d)", err, s.cfg.Hypervisor.BootConcurrency)
	}
	if waited {
		logrus.WithField("sandbox", s.id).WithField("waited", time.Since(start).Round(time.Millisecond)).Info("boot slot free: booting")
	}
	return slot, nil
}

// validateID checks a sandbox id before it names a directory (see
// oci.ValidateID, the one check every entry point uses).
func validateID(id string) error { return oci.ValidateID("sandbox id", id) }

func (s *Sandbox) path(name string) string { return filepath.Join(s.dir, name) }

// machine describes the VM from the configuration and options.
func (s *Sandbox) machine(opts Options) (vmm.Spec, error) {
	h := s.cfg.Hypervisor
	vcpus, mem := h.DefaultVCPUs, h.DefaultMemoryMiB
	if opts.VCPUs > 0 {
		vcpus = opts.VCPUs
	}
	if opts.MemoryMiB > 0 {
		mem = opts.MemoryMiB
	}
	accel := opts.Accel
	if accel == "" {
		accel = vmm.TCG
	}
	kind := transportKind(s.cfg.Agent.Transport)
	params := agentCmdlineTransport + "=" + string(kind) + " " + transport.CmdlineAuth + "=1"
	if mechanismOf(s.cfg) != memory.None {
		// Hot-plug room puts guest physical memory above 4 GiB, which
		// makes the kernel reserve a 64 MiB SWIOTLB bounce buffer at boot
		// (measured: MemTotal 152 instead of 217 MiB in a 256 MiB VM).
		// Berth's virtio devices all do 64-bit DMA and never bounce; keep
		// a small 8 MiB pool for anything that might.
		params += " swiotlb=4096"
	}
	if s.cfg.Debug.GuestExec {
		params += " " + agentCmdlineDebugExec + "=1"
	}
	if h.KernelParams != "" {
		params += " " + h.KernelParams
	}
	initrd, rootImage, err := GuestRoot(s.cfg)
	if err != nil {
		return vmm.Spec{}, err
	}
	m := vmm.Spec{
		Binary:              h.Path,
		Kind:                vmm.MachineKind(h.Machine),
		Accel:               accel,
		VCPUs:               vcpus,
		MemoryMiB:           mem,
		TranslationCacheMiB: h.TCGTBSizeMiB,
		Firmware:            h.EffectiveFirmware(s.cfg.Devices),
		Kernel:              s.cfg.Guest.Kernel,
		Initrd:              initrd,
		RootImage:           rootImage,
		KernelParams:        params,
		ConsoleLog:          s.path(consoleLogName),
		// The guest writes what it likes to its console: capped.
		ConsoleLogMaxBytes: h.LogMaxBytes(),
		Seccomp:            h.QEMUSandbox,
		ControlSocket:      s.path(qmpSocketName),
		SerialPorts:        []vmm.SerialPort{{ID: "agent", Name: transport.SerialPortName, SocketPath: s.path(agentSockName)}},
		FileSystems:        []vmm.VhostUserFS{{ID: "shared", Tag: oci.SharedFSTag, SocketPath: s.path(fsSocketName)}},
		FirmwareFiles:      []vmm.FirmwareFile{{Name: transport.SecretFwCfgName, Path: s.path(secretFileName)}},
	}
	// Free page reporting gives freed guest pages back to the host; elastic
	// memory relies on it between unplugs.
	if h.FreePageReporting || s.cfg.ElasticMemory() && m.Kind == vmm.Q35 {
		m.Balloon = &vmm.Balloon{FreePageReporting: true}
	}
	if kind == transport.Vsock {
		if _, err := os.Stat(vhostVsockDevice); err != nil {
			return m, fmt.Errorf("agent.transport = \"vsock\" but %s is missing: load it with `modprobe vhost_vsock`, or set agent.transport = \"auto\": %w", vhostVsockDevice, errdefs.ErrFailedPrecondition)
		}
		// The virtio-serial port stays (it costs nothing and keeps
		// the guest's device set the same); the agent listens on vsock.
		m.Vsock = &vmm.Vsock{GuestCID: guestCID(s.id)}
	}
	if len(h.Pflashes) == 2 {
		// UEFI writes its variable store: each VM gets its own copy.
		vars := s.path("efivars.fd")
		if err := copyFile(h.Pflashes[1], vars); err != nil {
			return m, fmt.Errorf("copy UEFI variable store (hypervisor.pflashes): %w", err)
		}
		if err := giveToVMM(s.vmmUser, vars); err != nil {
			return m, err
		}
		m.Pflash = []string{h.Pflashes[0], vars}
	}
	return m, nil
}

// GuestRoot resolves guest.root into the VM's initramfs or root image
// (one of the two is empty).
func GuestRoot(cfg *config.Config) (initrd, rootImage string, err error) {
	g := cfg.Guest
	_, statErr := os.Stat(g.RootImage)
	if !cfg.BootsRootImage(statErr == nil) {
		return g.Initrd, "", nil
	}
	if statErr != nil {
		return "", "", fmt.Errorf("guest.root = %q but the root image is missing: run `berth guest build` (it writes one for a kernel with virtio-pmem, DAX and erofs built in), or set guest.root = %q: %w",
			g.Root, config.GuestRootInitramfs, errors.Join(statErr, errdefs.ErrFailedPrecondition))
	}
	return "", g.RootImage, nil
}

// vhostVsockDevice is the host device vsock needs.
const vhostVsockDevice = "/dev/vhost-vsock"

// transportKind resolves agent.transport: "auto" is vsock where the host
// has vhost-vsock, virtio-serial (multiplexed with yamux) otherwise.
func transportKind(setting string) transport.Kind {
	switch setting {
	case config.TransportVsock:
		return transport.Vsock
	case config.TransportVirtioSerial:
		return transport.VirtioSerial
	}
	if _, err := os.Stat(vhostVsockDevice); err == nil {
		return transport.Vsock
	}
	return transport.VirtioSerial
}

// guestCID derives a vsock context id from the sandbox id. CIDs must be
// unique per host; 3 and above are free for guests, and 2^32-1 is "any".
// A clash makes QEMU fail at start with "unable to set guest cid", which
// Create reports.
func guestCID(id string) uint32 {
	sum := sha256.Sum256([]byte(id))
	cid := uint32(sum[0])<<24 | uint32(sum[1])<<16 | uint32(sum[2])<<8 | uint32(sum[3])
	return 3 + cid%(1<<31)
}

// agentCmdlineTransport must match agent.CmdlineTransport (the host does
// not import the guest package).
const agentCmdlineTransport = "berth.transport"

// agentCmdlineDebugExec must match agent.CmdlineDebugExec.
const agentCmdlineDebugExec = "berth.debug_exec"

// guestClockInterval is how often the host sends the guest its time
// again after the boot. Under TCG the guest's clock runs on the host's
// TSC at the frequency the host calibrated; it drifted from the host's
// wall clock by ~40 ppm (15 ms in 6 minutes, measured), which unchecked
// would be seconds a day. The agent slews small differences away.
const guestClockInterval = time.Minute

// guestClockRecheck is when the host sends its time the second time. The
// first set leaves the guest behind by that request's transit, 6-25 ms
// while the guest is still busy with its boot and first create; a second
// request once that is over finds the difference and the agent steps
// the clock forward by it.
const guestClockRecheck = 2 * time.Second

// keepGuestClock sets the guest's wall clock to the host's at once (the
// API's SetClock says why), again after guestClockRecheck and then
// every guestClockInterval until the sandbox goes away.
func (s *Sandbox) keepGuestClock(ctx context.Context) {
	next := time.NewTimer(guestClockRecheck)
	defer next.Stop()
	for s.setGuestClock(ctx) {
		select {
		case <-s.vmm.Done():
			return
		case <-next.C:
			next.Reset(guestClockInterval)
		}
	}
}

// setGuestClock sends the guest the host's time once and reports whether
// the agent is still there to be sent it again. A failure costs the
// accuracy of the guest's clock, not the sandbox, so it is logged and
// the sandbox goes on.
func (s *Sandbox) setGuestClock(ctx context.Context) bool {
	log := logrus.WithField("sandbox", s.id)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sent := time.Now()
	resp, err := s.agent.SetClock(ctx, &api.SetClockRequest{HostTime: timestamppb.New(sent)})
	if errors.Is(err, ttrpc.ErrClosed) || s.failure.closing.Load() || isClosed(s.vmm.Done()) {
		return false // the sandbox or its VM went away
	}
	if err != nil {
		log.WithError(err).Warn("set the guest's clock from the host's: the guest's time and the exit times it reports may be off")
		return true
	}
	log.WithField("guest_minus_host", resp.GetGuestTime().AsTime().Sub(sent)).WithField("round_trip", time.Since(sent)).Debug("set the guest's clock")
	return true
}

// connectAgent waits until the agent answers Info, the VM dies, or the
// boot timeout passes. Over virtio-serial the first request simply waits
// in the port's buffers until the agent opens the port, so one call
// suffices; the loop covers transports that refuse connections until the
// agent listens.
func (s *Sandbox) connectAgent(ctx context.Context) error {
	timeout := s.cfg.Hypervisor.BootTimeout.Duration
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		info   *api.InfoResponse
		client *ttrpc.Client
		err    error
	}
	done := make(chan result, 1)
	go func() {
		for {
			conn, err := s.dialer.Dial(ctx, transport.AgentPort)
			if err == nil {
				client := newAgentRPCClient(conn)
				var info *api.InfoResponse
				if info, err = api.NewAgentClient(client).Info(ctx, &api.InfoRequest{}); err == nil {
					done <- result{info: info, client: client}
					return
				}
				client.Close()
			}
			if ctx.Err() != nil {
				// The deadline or a cancellation is the cause, whatever
				// the last attempt said.
				done <- result{err: ctx.Err()}
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	select {
	case r := <-done:
		if r.err != nil || r.info == nil {
			if errors.Is(r.err, context.DeadlineExceeded) {
				return fmt.Errorf("the guest agent did not answer within %s (hypervisor.boot_timeout); last console lines:\n%s", timeout, s.consoleTail())
			}
			return fmt.Errorf("connect to guest agent: %w", r.err)
		}
		if err := api.Compatible(r.info); err != nil {
			r.client.Close()
			return fmt.Errorf("%w, run `berth --state-dir %s guest build`: %w", err, s.cfg.StateDir, errdefs.ErrFailedPrecondition)
		}
		s.rpc, s.agent, s.info = r.client, api.NewAgentClient(r.client), r.info
		// The clock is set beside what follows the connect rather than
		// before it: the round trip took 9-10 ms under TCG, and the
		// first container's process starts long after it is done.
		go s.keepGuestClock(context.WithoutCancel(ctx))
		return nil
	case <-s.vmm.Done():
		cancel()
		go func() {
			if r := <-done; r.client != nil {
				r.client.Close()
			}
		}()
		return fmt.Errorf("the VM exited during boot: %v; last console lines:\n%s", s.VMError(), s.consoleTail())
	}
}

// consoleTail returns the last lines of the guest console for errors.
func (s *Sandbox) consoleTail() string {
	return tail(s.path(consoleLogName), 15)
}

// MetricsSocket is the path of the sandbox's metrics socket.
func (s *Sandbox) MetricsSocket() string { return s.path(MetricsSocketName) }

// ID returns the sandbox id.
func (s *Sandbox) ID() string { return s.id }

// Info returns what the agent reported when the sandbox became ready.
func (s *Sandbox) Info() *api.InfoResponse { return s.info }

// Agent returns the agent client.
func (s *Sandbox) Agent() api.AgentService { return s.agent }

// VMMPid returns the hypervisor's pid.
func (s *Sandbox) VMMPid() int { return s.vmm.Pid() }

// Done is closed when the VM has exited.
func (s *Sandbox) Done() <-chan struct{} { return s.vmm.Done() }

// VMError explains why the VM exited; call it after Done. A helper's
// failure that stopped the VM comes first: it is the cause.
func (s *Sandbox) VMError() error {
	if err := s.failure.reason(); err != nil {
		return err
	}
	if err := s.vmm.ExitError(); err != nil {
		return err
	}
	return errors.New("the VM powered off")
}

// openStream opens a stdio stream to the agent and sends its header.
func (s *Sandbox) openStream(ctx context.Context, hdr *api.StreamHeader) (net.Conn, error) {
	conn, err := s.dialer.Dial(ctx, transport.StdioPort)
	if err != nil {
		return nil, err
	}
	if err := writeStreamHeader(conn, hdr); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Destroy stops the VM and removes every host resource of the sandbox. It
// is idempotent and works whether or not the VM is still alive.
func (s *Sandbox) Destroy(ctx context.Context) error {
	s.destroyOnce.Do(func() { s.destroyErr = s.destroy(ctx) })
	return s.destroyErr
}

// errNoAgent stands for a Shutdown that could not be asked: the sandbox
// never reached its agent.
var errNoAgent = errors.New("no agent connection")

func (s *Sandbox) destroy(ctx context.Context) error {
	log := logrus.WithField("sandbox", s.id)
	s.failure.closing.Store(true)
	var errs []error
	s.stopElastic()
	select {
	case <-s.vmm.Done():
	default:
		// Ask the guest to end: the agent kills the containers and syncs
		// before it replies. After a reply nothing in the guest needs to
		// run any more and QEMU is told to quit at once, rather than
		// waiting for the guest's own power-off (~0.1 s under TCG).
		// Without one, give the guest the rest of the 2 s to power off.
		// Either way QMP quit and then SIGKILL (inside Shutdown) follow.
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var err error = errNoAgent
		if s.agent != nil {
			_, err = s.agent.Shutdown(sctx, nil)
		}
		if err != nil {
			select {
			case <-s.vmm.Done():
			case <-sctx.Done():
			}
		}
		cancel()
		sctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		if err := s.vmm.Shutdown(sctx); err != nil {
			log.WithError(err).Warn("shutdown VM")
		}
		cancel()
	}
	if s.mgmt != nil {
		s.mgmt.Close()
	}
	if s.rpc != nil {
		s.rpc.Close()
	}
	s.dialer.Close()
	s.virtiofsd.stop()
	if err := s.detachNetwork(); err != nil {
		errs = append(errs, err)
	}
	// QEMU is reaped (Shutdown or Done above): its uid is free again.
	defer s.vmmUser.release()
	// QEMU has been reaped and virtiofsd has exited: the cgroup is empty.
	if err := s.cgroup.Delete(ctx); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, s.deleteContainerCgroups(ctx))
	s.mu.Lock()
	ids := make([]string, 0, len(s.mounts))
	for id := range s.mounts {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		if err := s.releaseMounts(id); err != nil {
			errs = append(errs, fmt.Errorf("unmount container %s: %w", id, err))
		}
	}
	if err := s.tree.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := removeDir(s.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// releaseCgroupWhenVMExits removes the host cgroup as soon as QEMU is
// gone (killed, crashed or powered off), not only when the sandbox is
// destroyed: containerd may keep a dead task around until someone deletes
// it, and the cgroup would linger with it. virtiofsd, which serves nobody
// once QEMU is gone, is stopped first so that the cgroup is empty.
// Destroy removes it again, which is a no-op by then.
func (s *Sandbox) releaseCgroupWhenVMExits() {
	<-s.vmm.Done()
	s.virtiofsd.stop()
	if err := s.cgroup.Delete(context.Background()); err != nil {
		logrus.WithField("sandbox", s.id).WithError(err).Warn("remove sandbox cgroup after the VM exited")
	}
}

// cleanupStack undoes a half-finished Create in reverse order.
type cleanupStack struct{ fns []func() }

func (c *cleanupStack) push(f func()) { c.fns = append(c.fns, f) }

func (c *cleanupStack) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
}
