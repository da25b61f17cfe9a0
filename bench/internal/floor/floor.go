// Package floor is the benchmarks' raw VM boot floor: QEMU with Berth's
// guest image and only the agent's port, timed until the agent answers.
// bench/boot and bench/ctr report their figures against it.
package floor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/ttrpc"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/transport"
	"github.com/berth-runtime/berth/internal/vmm"
)

// bootLimit bounds one boot; a TCG boot takes seconds, so reaching this
// means something hangs, not that the host is slow.
const bootLimit = 2 * time.Minute

// Machine is the raw VM RawBoot boots (bench/bootprof samples the same
// one), with its sockets and console in dir and params added to the
// configured kernel parameters.
func Machine(cfg *config.Config, accel qemu.Accel, dir, params string) (qemu.Machine, error) {
	h := cfg.Hypervisor
	initrd, rootImage, err := sandbox.GuestRoot(cfg)
	if err != nil {
		return qemu.Machine{}, err
	}
	kp := "berth.transport=" + string(transport.VirtioSerial)
	for _, p := range []string{h.KernelParams, params} {
		if p != "" {
			kp += " " + p
		}
	}
	return qemu.Machine{
		Binary: h.Path, Type: qemu.MachineType(h.Machine), Accel: accel,
		VCPUs: h.DefaultVCPUs, MemoryMiB: h.DefaultMemoryMiB, TCGTBSizeMiB: h.TCGTBSizeMiB,
		BIOS:   qemu.MachineFor(vmm.Spec{Kind: vmm.MachineKind(h.Machine), Firmware: h.EffectiveFirmware(cfg.Devices)}).BIOS,
		Kernel: cfg.Guest.Kernel, Initrd: initrd, RootImage: rootImage,
		KernelParams: kp,
		ConsoleLog:   filepath.Join(dir, "console.log"),
		QMPSocket:    filepath.Join(dir, "qmp.sock"),
		SerialPorts:  []qemu.VirtioSerialPort{{ID: "agent", Name: transport.SerialPortName, SocketPath: filepath.Join(dir, "agent.sock")}},
	}, nil
}

// RawBoot boots the smallest VM that reaches the agent: Berth's kernel,
// initramfs or root image (guest.root), machine type, vCPUs and memory,
// and only the agent's virtio-serial port; no virtio-fs (so no virtiofsd and no shared memory)
// and none of the extras sandbox.Create may add (memory hot-plug room,
// vsock). It measures from QEMU's start until the agent answers Info:
// the floor any VM-based run pays, so that what sandbox.Create takes
// beyond it is Berth's. It also returns how many Info attempts failed
// before one succeeded.
func RawBoot(ctx context.Context, cfg *config.Config, accel qemu.Accel, tmp string) (time.Duration, int, error) {
	dir, err := os.MkdirTemp(tmp, "raw-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	m, err := Machine(cfg, accel, dir, "")
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, bootLimit)
	defer cancel()
	start := time.Now()
	vm, err := qemu.Start(ctx, m, qemu.StartOptions{DieWithParent: true})
	if err != nil {
		return 0, 0, err
	}
	// Kill, not a guest power-off: teardown is not part of the floor, and
	// Kill returns only once QEMU is reaped, before dir is removed.
	defer vm.Kill()
	d := transport.NewSerialDialer(filepath.Join(dir, "agent.sock"))
	defer d.Close()

	// Retry as sandbox.Create's connectAgent does, so that the floor is
	// measured the way berth run reaches the agent: a first connection
	// made while the guest is still booting is occasionally closed.
	type result struct {
		d        time.Duration
		failures int
		err      error
	}
	done := make(chan result, 1)
	go func() {
		for failures := 0; ; failures++ {
			err := agentInfo(ctx, d)
			if err == nil {
				done <- result{d: time.Since(start), failures: failures}
				return
			}
			if ctx.Err() != nil {
				done <- result{err: err}
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	select {
	case r := <-done:
		if r.err != nil && ctx.Err() == context.DeadlineExceeded {
			return 0, 0, fmt.Errorf("the agent did not answer within %v: %w; last console lines:\n%s", bootLimit, r.err, consoleTail(m.ConsoleLog))
		}
		return r.d, r.failures, r.err
	case <-vm.Done():
	}
	err = vm.ExitError()
	if err == nil {
		err = errors.New("the guest powered off")
	}
	return 0, 0, fmt.Errorf("the VM exited during boot: %v; last console lines:\n%s", err, consoleTail(m.ConsoleLog))
}

// agentInfo makes one Info call on a new stream. Over virtio-serial the
// request waits in the port's buffers until the agent opens the port.
func agentInfo(ctx context.Context, d transport.Dialer) error {
	conn, err := d.Dial(ctx, transport.AgentPort)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	_, err = api.NewAgentClient(client).Info(ctx, &api.InfoRequest{})
	return err
}

// consoleTail returns the end of the guest console log.
func consoleTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
