// Command devices measures block device hot-plug on q35: how long from the
// QMP call until the disk's node exists in the guest, and in a container.
//
//	QMP blockdev-add + device_add        the QMP calls alone (QEMU's reply)
//	QMP call until /dev/vdX in the guest  ACPI hot-plug, PCI rescan, virtio
//	                                      probe, devtmpfs node: the agent's
//	                                      WaitDevice returns
//	unplug (device_del until DEVICE_DELETED, blockdev-del)
//	container create, no disk             sandbox.CreateContainer, baseline
//	container create with /dev/xda        the same with a disk: the QMP call
//	                                      is its first step and the node
//	                                      exists in the container when it
//	                                      returns (libcontainer made it)
//	container delete with /dev/xda        includes the unplug
//
// The first three rows use QEMU and the agent directly (a VM with one
// root port and no virtio-fs); the others use the sandbox package, as the
// shim does. The disk is a loop device over a 64 MiB file. Each row is
// the median (min, max) of -n runs after one untimed warm-up.
//
// Usage (root, guest image built):
//
//	go run ./bench/devices -n 10 -state-dir /var/lib/berth -rootfs bin/rootfs-busybox
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/bench/internal/benchtab"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/qemu"
	"github.com/berth-runtime/berth/internal/sandbox"
	"github.com/berth-runtime/berth/internal/transport"
	"github.com/berth-runtime/berth/internal/vmm"
)

func main() {
	n := flag.Int("n", 10, "timed runs of each measurement")
	stateDir := flag.String("state-dir", "", "Berth state directory holding the guest image (default: state_dir of the configuration)")
	cfgPath := flag.String("config", "", "base configuration file (default: "+config.DefaultPath+" if it exists, else the built-in defaults)")
	rootfs := flag.String("rootfs", "bin/rootfs-busybox", "container root file system (busybox)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *n, *stateDir, *cfgPath, *rootfs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// series is one row of the table.
type series = benchtab.Series

func add(s *series, d time.Duration) { s.Runs = append(s.Runs, d) }

func run(ctx context.Context, n int, stateDir, cfgPath, rootfs string) (retErr error) {
	if n < 1 {
		return fmt.Errorf("-n %d: need at least one run", n)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it starts QEMU, attaches a loop device and mounts")
	}
	logrus.SetLevel(logrus.WarnLevel)
	rootfs, err := filepath.Abs(rootfs)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(rootfs, "bin", "sh")); err != nil {
		return fmt.Errorf("-rootfs %s: no /bin/sh in it (make rootfs builds one)", rootfs)
	}
	tmp, err := os.MkdirTemp("", "berth-bench-dev-")
	if err != nil {
		return err
	}
	// QEMU runs as an unprivileged uid and must reach run_dir below it.
	os.Chmod(tmp, 0o711)
	defer func() {
		sandbox.CleanupStale(filepath.Join(tmp, "run"))
		os.RemoveAll(tmp)
	}()
	cfg, err := config.Load(cfgPath, config.Overrides{StateDir: stateDir})
	if err != nil {
		return err
	}
	cfg.RunDir = filepath.Join(tmp, "run")
	cfg.Hypervisor.Machine = config.MachineQ35
	accel := qemu.TCG
	if cfg.Hypervisor.Accel == config.AccelKVM {
		accel = qemu.KVM
	}

	disk, detach, err := loopDisk(tmp)
	if err != nil {
		return err
	}
	defer func() {
		if err := detach(); err != nil && retErr == nil {
			retErr = err
		}
	}()

	fmt.Printf("host: %d CPUs; accelerator %s; machine q35, %d vCPU, %d MiB\n", runtime.NumCPU(), accel, cfg.Hypervisor.DefaultVCPUs, cfg.Hypervisor.DefaultMemoryMiB)
	fmt.Printf("disk: %s (loop device over a 64 MiB file); %d timed runs after 1 warm-up\n\n", disk, n)

	qmpRow := &series{Name: "QMP blockdev-add + device_add (reply)"}
	guestRow := &series{Name: "QMP call until /dev/vdX in the guest"}
	unplugRow := &series{Name: "unplug: device_del to DEVICE_DELETED, blockdev-del"}
	if err := rawHotplug(ctx, cfg, accel, tmp, disk, n, qmpRow, guestRow, unplugRow); err != nil {
		return fmt.Errorf("raw hot-plug: %w", err)
	}
	baseRow := &series{Name: "container create, no disk"}
	diskRow := &series{Name: "container create with /dev/xda (QMP to node)"}
	delRow := &series{Name: "container delete with /dev/xda (unplug)"}
	if err := containerHotplug(ctx, cfg, accel, rootfs, disk, n, baseRow, diskRow, delRow); err != nil {
		return fmt.Errorf("container hot-plug: %w", err)
	}
	benchtab.Print(os.Stdout, []series{*qmpRow, *guestRow, *unplugRow, *baseRow, *diskRow, *delRow})
	fmt.Printf("\nhot-plug cost in a container create (medians, with disk - without): %s\n", benchtab.MS(benchtab.Median(diskRow.Runs)-benchtab.Median(baseRow.Runs)))
	if others := countQEMU(); others > 0 {
		fmt.Printf("note: %d other QEMU processes were running at the end; TCG figures vary with host load\n", others)
	}
	return nil
}

// loopDisk attaches a loop device to a 64 MiB file in dir.
func loopDisk(dir string) (string, func() error, error) {
	f := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		return "", nil, err
	}
	if err := os.Truncate(f, 64<<20); err != nil {
		return "", nil, err
	}
	out, err := exec.Command("losetup", "--find", "--show", f).CombinedOutput()
	if err != nil {
		return "", nil, fmt.Errorf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	return dev, func() error {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			return fmt.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
		return nil
	}, nil
}

// rawHotplug boots a VM with one root port and the agent, then plugs and
// unplugs the disk n+1 times.
func rawHotplug(ctx context.Context, cfg *config.Config, accel qemu.Accel, tmp, disk string, n int, qmpRow, guestRow, unplugRow *series) error {
	dir := filepath.Join(tmp, "raw")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	h := cfg.Hypervisor
	m := qemu.Machine{
		Binary: h.Path, Type: qemu.Q35, Accel: accel, VCPUs: h.DefaultVCPUs, MemoryMiB: h.DefaultMemoryMiB,
		Kernel: cfg.Guest.Kernel, Initrd: cfg.Guest.Initrd,
		KernelParams:  strings.TrimSpace("berth.transport=" + string(transport.VirtioSerial) + " " + h.KernelParams),
		ConsoleLog:    filepath.Join(dir, "console.log"),
		QMPSocket:     filepath.Join(dir, "qmp.sock"),
		SerialPorts:   []qemu.VirtioSerialPort{{ID: "agent", Name: transport.SerialPortName, SocketPath: filepath.Join(dir, "agent.sock")}},
		PCIeRootPorts: []qemu.PCIeRootPort{{ID: "rp0", Slot: 0x10, Chassis: 1}},
	}
	bootCtx, cancel := context.WithTimeout(ctx, h.BootTimeout.Duration)
	defer cancel()
	vm, err := qemu.Start(bootCtx, m, qemu.StartOptions{DieWithParent: true})
	if err != nil {
		return err
	}
	defer vm.Kill()
	d := transport.NewSerialDialer(m.SerialPorts[0].SocketPath)
	defer d.Close()
	// Retry as sandbox.connectAgent does: a connection made while the
	// guest is still booting can be dropped before the agent opens its
	// port.
	var agent api.AgentService
	for agent == nil {
		conn, err := d.Dial(bootCtx, transport.AgentPort)
		if err == nil {
			client := ttrpc.NewClient(conn)
			defer client.Close()
			c := api.NewAgentClient(client)
			if _, err = c.Info(bootCtx, &api.InfoRequest{}); err == nil {
				agent = c
				break
			}
		}
		select {
		case <-bootCtx.Done():
			b, _ := os.ReadFile(m.ConsoleLog)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) > 10 {
				lines = lines[len(lines)-10:]
			}
			return fmt.Errorf("agent did not answer: %v; console:\n  %s", err, strings.Join(lines, "\n  "))
		case <-vm.Done():
			return fmt.Errorf("the VM exited during boot: %v", vm.ExitError())
		case <-time.After(50 * time.Millisecond):
		}
	}
	for i := 0; i <= n; i++ {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		dev := qemu.BlockDevice{ID: fmt.Sprintf("blk%d", i), Path: disk, Bus: "rp0"}
		start := time.Now()
		if err := vm.HotplugBlock(ctx, dev); err != nil {
			cancel()
			return err
		}
		tQMP := time.Since(start)
		r, err := agent.WaitDevice(ctx, &api.WaitDeviceRequest{Kind: api.DeviceKind_DEVICE_BLOCK, PciPath: "10/00"})
		if err != nil {
			cancel()
			return fmt.Errorf("wait for the disk in the guest: %w", err)
		}
		tGuest := time.Since(start)
		start = time.Now()
		if err := vm.UnplugBlock(ctx, dev); err != nil {
			cancel()
			return err
		}
		tUnplug := time.Since(start)
		cancel()
		fmt.Fprintf(os.Stderr, "raw %d/%d: QMP %s, in guest as /dev/%s %s, unplug %s\n", i, n, benchtab.MS(tQMP), r.Name, benchtab.MS(tGuest), benchtab.MS(tUnplug))
		if i > 0 {
			add(qmpRow, tQMP)
			add(guestRow, tGuest)
			add(unplugRow, tUnplug)
		}
	}
	return nil
}

// containerHotplug boots one sandbox and creates containers in it,
// alternating without and with the disk.
func containerHotplug(ctx context.Context, cfg *config.Config, accel qemu.Accel, rootfs, disk string, n int, baseRow, diskRow, delRow *series) error {
	var st unix.Stat_t
	if err := unix.Stat(disk, &st); err != nil {
		return err
	}
	major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	sb, err := sandbox.Create(ctx, cfg, sandbox.Options{ID: fmt.Sprintf("bench-dev-%d", os.Getpid()), Driver: qemu.Driver{}, Accel: vmm.Accel(accel)})
	if err != nil {
		return err
	}
	defer sb.Destroy(context.Background())
	for i := 0; i <= n; i++ {
		for _, withDisk := range []bool{false, true} {
			spec := oci.DefaultSpec("/", oci.ProcessOptions{Args: []string{"sh", "-c", "test -b /dev/xda || test " + fmt.Sprint(!withDisk) + " = true"}})
			if withDisk {
				mode := os.FileMode(0o660)
				spec.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/xda", Type: "b", Major: major, Minor: minor, FileMode: &mode}}
				spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices,
					specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "rwm"})
			}
			id := fmt.Sprintf("c%d-%v", i, withDisk)
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			start := time.Now()
			p, err := sb.CreateContainer(cctx, sandbox.ContainerConfig{ID: id, Spec: spec, RootfsDir: rootfs, IO: sandbox.IO{Stdout: io.Discard}})
			tCreate := time.Since(start)
			if err != nil {
				cancel()
				return err
			}
			if err := p.Start(cctx); err != nil {
				cancel()
				return err
			}
			exit, err := p.Wait(cctx)
			if err == nil && exit.Code != 0 {
				err = fmt.Errorf("container %s: /dev/xda is not a block device in the container (exit %d)", id, exit.Code)
			}
			if err != nil {
				cancel()
				return err
			}
			start = time.Now()
			err = sb.DeleteContainer(cctx, id)
			tDelete := time.Since(start)
			cancel()
			if err != nil {
				return err
			}
			if i == 0 {
				continue
			}
			if withDisk {
				add(diskRow, tCreate)
				add(delRow, tDelete)
			} else {
				add(baseRow, tCreate)
			}
		}
		if i > 0 {
			fmt.Fprintf(os.Stderr, "container %d/%d: create %s, with disk %s, delete with disk %s\n", i, n,
				benchtab.MS(baseRow.Runs[i-1]), benchtab.MS(diskRow.Runs[i-1]), benchtab.MS(delRow.Runs[i-1]))
		}
	}
	return nil
}

// countQEMU counts running QEMU processes (comm is truncated to 15 bytes).
func countQEMU() int {
	c := 0
	stats, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, p := range stats {
		if b, err := os.ReadFile(p); err == nil && strings.HasPrefix(string(b), "qemu-system") {
			c++
		}
	}
	return c
}
