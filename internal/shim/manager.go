package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// RuntimeName is Berth's containerd runtime type.
const RuntimeName = "io.containerd.berth.v2"

// Register registers the task service as the shim's ttrpc plugin, the way
// containerd's runc shim registers its own.
func Register() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return taskService{newService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))}, nil
		},
	})
}

// Options are the shim binary's options: Berth waits for QEMU and
// virtiofsd itself (exec.Cmd.Wait), so containerd's reaper, which would
// reap them first and steal their exit status, is off.
func Options(c *shim.Config) {
	c.NoReaper = true
	c.NoSubreaper = true
}

// Manager starts and stops shim processes (containerd's `start` and
// `delete` binary calls).
type Manager struct{}

// NewManager returns the shim manager.
func NewManager() Manager { return Manager{} }

// Name is the runtime type.
func (Manager) Name() string { return RuntimeName }

// Start returns the address of the pod's shim, starting it if this is the
// pod's first container. It prints a plain socket address, which both
// containerd 1.6 (which cannot parse 2.x's JSON bootstrap) and 2.x accept.
func (Manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	spec, err := readSpecAnnotations(".")
	if errors.Is(err, os.ErrNotExist) {
		return "", errSandboxAPI(id)
	}
	if err != nil {
		return "", err
	}
	group, _ := oci.PodInfo(id, spec.Annotations)
	if err := validateIDs(id, group); err != nil {
		return "", err
	}
	address, err := shim.SocketAddress(ctx, opts.Address, group)
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
		if shim.CanConnect(address) {
			// The pod's shim is already running: join it.
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir, _ = os.Getwd()
	cmd.Env = os.Environ()
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start shim: %w", err)
	}
	go cmd.Wait()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		// Root without CAP_SYS_RESOURCE cannot change it; the shim works
		// regardless.
		log.G(ctx).WithError(err).Warn("adjust shim OOM score")
	}
	return address, nil
}

// Stop is containerd's `shim delete`: a fresh process cleaning up after a
// shim that died or failed to start. It unmounts the container's rootfs
// and, when the pod's shim is gone, kills the VM it left and removes the
// sandbox's host resources. It never talks to the agent, so it cannot
// hang on a dead guest.
func (Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	if err := mount.UnmountAll(filepath.Join(bundle, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmount rootfs")
	}
	if spec, err := readSpecAnnotations(bundle); err == nil {
		group, _ := oci.PodInfo(id, spec.Annotations)
		// The sandbox id comes from the bundle's annotations, which the
		// pod spec's author writes: one that is not a plain id names no
		// sandbox of ours, and nothing is removed for it.
		if err := validateIDs(id, group); err != nil {
			log.G(ctx).WithError(err).Warn("not removing a sandbox")
		} else if cfg, err := bundleConfig(bundle); err != nil {
			log.G(ctx).WithError(err).Warn("not removing a sandbox: no configuration")
		} else {
			err := sandbox.RemoveOrphan(cfg.RunDir, group)
			if err != nil && !errors.Is(err, sandbox.ErrOwnerAlive) {
				log.G(ctx).WithError(err).Warn("remove sandbox")
			}
		}
	}
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}

// configPathFile, in a bundle, names the ConfigPath configuration its
// create used; absent when the shim's default applied.
const configPathFile = "berth-config-path"

// recordConfigPath notes path in the bundle for bundleConfig.
func recordConfigPath(bundle, path string) error {
	if err := os.WriteFile(filepath.Join(bundle, configPathFile), []byte(path), 0o600); err != nil {
		return fmt.Errorf("record the runtime's ConfigPath in the bundle: %w", err)
	}
	return nil
}

// bundleConfig is the configuration the bundle's create used: the
// recorded ConfigPath, or the default. The config chosen for a request is
// used for everything in it, cleanup included (its run_dir is where the
// sandbox lives).
func bundleConfig(bundle string) (*config.Config, error) {
	b, err := os.ReadFile(filepath.Join(bundle, configPathFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return loadConfig()
	case err != nil:
		return nil, err
	}
	return loadConfigPath(string(b))
}

// validateIDs checks a container id and the sandbox id its annotations
// name, before either builds a path.
func validateIDs(containerID, sandboxID string) error {
	if err := oci.ValidateID("container id", containerID); err != nil {
		return err
	}
	if err := oci.ValidateID("sandbox id (annotation "+oci.SandboxIDAnnotations[0]+")", sandboxID); err != nil {
		return err
	}
	return nil
}

// errSandboxAPI explains a bundle without config.json: containerd 2.x
// starts a shim that way only for its Sandbox API (the CRI runtime's
// `sandboxer = "shim"`), and then drives it through a sandbox service
// Berth does not serve; the task API path (sandboxer = "podsandbox", the
// default) runs the same pods.
func errSandboxAPI(id string) error {
	return fmt.Errorf("bundle of %q has no config.json: containerd is using its Sandbox API (sandboxer = \"shim\" in the berth runtime's CRI settings), which Berth does not serve; remove the sandboxer setting or set sandboxer = \"podsandbox\" (docs/containerd.md): %w", id, errdefs.ErrNotImplemented)
}

// readSpecAnnotations reads only what the manager needs from config.json.
func readSpecAnnotations(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// taskService adapts service to the shim's ttrpc plugin interface.
type taskService struct{ *service }

// RegisterTTRPC serves the task API on the shim's ttrpc server.
func (t taskService) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, t.service)
	return nil
}
