package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/transport"
)

// CmdlineTransport is the kernel command line parameter by which the host
// tells the agent which transport it wired up.
const CmdlineTransport = "berth.transport"

// Serve runs the agent service until its listeners fail. It is the body of
// the agent service (RunService).
func Serve(ctx context.Context) error { return ServeHooked(ctx, Hooks{}) }

// Hooks change what ServeHooked serves. The real agent sets none. They
// exist for the test-only agent that plays a fully compromised guest
// (test/e2e/evilagent): it runs this very service, so that sandboxes boot
// and containers run, and attacks the host through the same channel.
type Hooks struct {
	// Service, if set, wraps the service registered with ttrpc.
	Service func(api.AgentService) api.AgentService
	// Mux hooks the virtio-serial transport (transport.NewSerialMuxHooked).
	Mux transport.MuxHooks
}

// ServeHooked is Serve with hooks.
func ServeHooked(ctx context.Context, hooks Hooks) error {
	logrus.SetOutput(os.Stderr)
	// No colours: the console is a terminal, but its reader is the
	// host's console.log, where escape codes only get in the way of grep.
	logrus.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})
	cmdline, _ := os.ReadFile("/proc/cmdline")
	kind := transport.Kind(cmdlineValue(string(cmdline), CmdlineTransport))
	if kind == "" {
		kind = transport.VirtioSerial
	}
	agentL, stdioL, err := listen(ctx, kind, hooks.Mux)
	if err != nil {
		return err
	}
	if cmdlineValue(string(cmdline), transport.CmdlineAuth) == "1" {
		secret, err := readSecret()
		if err != nil {
			return err
		}
		agentL, stdioL = transport.RequireToken(agentL, secret), transport.RequireToken(stdioL, secret)
	} else {
		logrus.Warn("the host gave no sandbox secret (berth.auth): streams are not authenticated")
	}
	share := &sharedFS{}
	// The share's FUSE handshake with the host's virtiofsd overlaps the
	// host's connection set-up instead of adding to the first create.
	go share.mountEarly()
	svc := New(Options{
		StateRoot:     "/run/berth/libcontainer",
		PrepareRootfs: share.ensure,
		PowerOff:      powerOff,
		DebugExec:     cmdlineValue(string(cmdline), CmdlineDebugExec) == "1",
	})
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	var registered api.AgentService = svc
	if hooks.Service != nil {
		registered = hooks.Service(svc)
	}
	api.RegisterAgentService(srv, registered)
	go svc.WatchMemory(ctx)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ctx, agentL) }()
	go func() { errc <- svc.ServeStdio(ctx, stdioL) }()
	logrus.Infof("berth-agent %s serving over %s (seccomp %v)", Version, kind, seccomp.Enabled)
	return <-errc
}

// readSecret reads the sandbox secret the host passed through fw_cfg. The
// qemu_fw_cfg module is loaded at boot; its sysfs tree may take a moment.
func readSecret() ([]byte, error) {
	path := "/sys/firmware/qemu_fw_cfg/by_name/" + transport.SecretFwCfgName + "/raw"
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if len(b) != transport.TokenBytes {
				return nil, fmt.Errorf("sandbox secret %s holds %d bytes, want %d", path, len(b), transport.TokenBytes)
			}
			return b, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the host requires authentication (berth.auth=1) but the sandbox secret is unreadable: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func listen(ctx context.Context, kind transport.Kind, muxHooks transport.MuxHooks) (agentL, stdioL net.Listener, err error) {
	switch kind {
	case transport.Vsock:
		if agentL, err = transport.ListenVsock(transport.AgentPort); err != nil {
			return nil, nil, err
		}
		if stdioL, err = transport.ListenVsock(transport.StdioPort); err != nil {
			agentL.Close()
			return nil, nil, err
		}
		return agentL, stdioL, nil
	case transport.VirtioSerial:
		// The port appears once virtio_console has probed it; modules are
		// loaded before we start, but probing can still be in flight.
		var dev string
		deadline := time.Now().Add(10 * time.Second)
		for {
			dev, err = transport.FindSerialPort("/", transport.SerialPortName)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return nil, nil, err
		}
		mux := transport.NewSerialMuxHooked(dev, muxHooks)
		if agentL, err = mux.Listen(transport.AgentPort); err != nil {
			return nil, nil, err
		}
		if stdioL, err = mux.Listen(transport.StdioPort); err != nil {
			return nil, nil, err
		}
		return agentL, stdioL, nil
	default:
		return nil, nil, fmt.Errorf("%s=%q: unknown transport", CmdlineTransport, kind)
	}
}

// cmdlineValue returns the value of key=value on a kernel command line.
func cmdlineValue(cmdline, key string) string {
	for _, f := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// sharedFS mounts the sandbox's virtio-fs share, where the host places
// every container's root file system. The agent mounts it as it starts
// (mountEarly): the host starts virtiofsd before QEMU, so the share is
// there, and the mount's round trips to virtiofsd (5-15 ms under TCG)
// then overlap the host's own set-up instead of the first create.
// ensure mounts it on first use if that did not work (a VM booted without
// the share), and is what reports the error.
type sharedFS struct {
	mu      sync.Mutex
	mounted bool
}

// mountEarly mounts the share ahead of the first create.
func (s *sharedFS) mountEarly() {
	if err := s.mount(); err != nil {
		logrus.WithError(err).Debug("virtio-fs share not mounted at start; the first create that needs it tries again")
	}
}

// ensure mounts the share before a container whose root is in it is
// created (a root elsewhere needs nothing).
func (s *sharedFS) ensure(ctx context.Context, rootPath string) error {
	if !strings.HasPrefix(rootPath, oci.GuestSharedDir+"/") {
		return nil
	}
	return s.mount()
}

func (s *sharedFS) mount() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mounted {
		return nil
	}
	if err := os.MkdirAll(oci.GuestSharedDir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(oci.SharedFSTag, oci.GuestSharedDir, "virtiofs", 0, ""); err != nil {
		return fmt.Errorf("mount virtio-fs share %q on %s: %w (is the virtiofs module loaded and virtiofsd running?)", oci.SharedFSTag, oci.GuestSharedDir, err)
	}
	s.mounted = true
	return nil
}
