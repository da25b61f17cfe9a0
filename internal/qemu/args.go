package qemu

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
)

// IDs of what Berth adds on its own. They start with reservedIDPrefix so
// they cannot collide with caller-chosen device IDs.
const (
	ramID          = "berth-ram"
	consoleID      = "berth-console"
	balloonID      = "berth-balloon"
	qmpID          = "berth-qmp"
	serialCtlID    = "berth-vser0"
	vsockID        = "berth-vsock"
	rootImageID    = "berth-root"
	rootImageMemID = "berth-root-mem"
	chardevPrefix  = "char-" // chardev of the device with the same ID
	consoleFdSet   = 1
	fallbackTSCkHz = 2_000_000
)

// QBootROM is qboot's image in QEMU's data directory (Debian's
// qemu-system-data): -bios takes a bare file name and QEMU finds it there,
// so it works with any QEMU installation that ships it.
const QBootROM = "qboot.rom"

// DefaultTCGTBSizeMiB is the TCG translation cache size when
// Machine.TCGTBSizeMiB is 0 (config hypervisor.tcg_tb_size documents the
// measurement behind it).
const DefaultTCGTBSizeMiB = 128

// SandboxOpts is QEMU's -sandbox argument when Machine.Sandbox is set.
const SandboxOpts = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// ConsoleFD is the file descriptor number of the console pipe in QEMU
// (the first of exec.Cmd's ExtraFiles) when Machine.ConsoleLogMaxBytes is
// set.
const ConsoleFD = 3

// consoleCapped says whether the console goes through the capped-log pipe
// (ConsoleFD) rather than straight into ConsoleLog.
func (m Machine) consoleCapped() bool { return m.ConsoleLog != "" && m.ConsoleLogMaxBytes > 0 }

// Args returns QEMU's argv after the binary. The same Machine always gives
// the same arguments, in the same order.
func (m Machine) Args() ([]string, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	var a argv
	// -nodefaults: no implicit NIC, VGA, serial, parallel, floppy or CD;
	// every device is one Berth asked for. -no-user-config: ignore
	// /etc/qemu/*.conf so the host cannot change the VM behind our back.
	// -no-reboot: a guest reboot or panic (panic=-1) ends QEMU instead of
	// looping, so a dead guest is a dead process that we notice.
	a.add("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot")
	if m.Sandbox {
		a.add("-sandbox", SandboxOpts)
	}
	a.add("-machine", m.machineOpts())
	if m.Paused {
		a.add("-S")
	}
	if m.Type == MicroVM {
		// QEMU's virtio-mmio transport defaults to the legacy (virtio
		// 0.9) interface, which libvhost-user refuses: virtiofsd dies
		// with "virtio legacy devices aren't supported by
		// libvhost-user". Modern virtio-mmio works with the guest's
		// virtio_mmio driver and every device type Berth uses.
		a.add("-global", "virtio-mmio.force-legacy=false")
	}
	switch m.Accel {
	case KVM:
		a.add("-accel", "kvm", "-cpu", "host")
	case TCG:
		// thread=multi runs one host thread per vCPU. tb-size caps the
		// translated-code cache: QEMU's default is 1 GiB per VM, which
		// fills slowly but then counts against host memory per pod.
		tb := m.TCGTBSizeMiB
		if tb == 0 {
			tb = DefaultTCGTBSizeMiB
		}
		a.add("-accel", "tcg,thread=multi,tb-size="+strconv.Itoa(tb), "-cpu", "max")
	}
	a.add("-smp", strconv.Itoa(m.VCPUs))
	rootMiB := 0
	if m.RootImage != "" {
		var err error
		if rootMiB, err = rootImageMiB(m.RootImage); err != nil {
			return nil, err
		}
	}
	mem := strconv.Itoa(m.MemoryMiB) + "M"
	memOpt := mem
	if m.MaxMemoryMiB > m.MemoryMiB || rootMiB > 0 {
		// A virtio-pmem device takes guest physical address space from
		// the same device-memory region as hot-plugged memory: the
		// root image is added to the ceiling, so hot-plug keeps all of
		// the room it was given.
		memOpt += ",slots=" + strconv.Itoa(m.MemorySlots) + ",maxmem=" + strconv.Itoa(max(m.MaxMemoryMiB, m.MemoryMiB)+rootMiB) + "M"
	}
	a.add("-m", memOpt)
	if m.sharedMemory() {
		// vhost-user back ends (virtiofsd) map guest RAM from a file
		// descriptor, so RAM must be a shared memfd. Giving it to the
		// machine as its RAM backend (rather than "-numa node,memdev=")
		// works on both q35 and microvm in QEMU 7.2 and does not invent
		// a NUMA topology for the guest.
		a.add("-object", "memory-backend-memfd,id="+ramID+",size="+mem+",share=on")
	}
	if m.BIOS != "" {
		a.add("-bios", m.BIOS)
	}
	for i, f := range m.Pflash {
		ro := ""
		if i == 0 {
			ro = ",readonly=on"
		}
		a.add("-drive", "if=pflash,format=raw,unit="+strconv.Itoa(i)+",file="+opt(f)+ro)
	}
	if v := m.VirtioMem; v != nil {
		// The region's backend must be shared like the boot RAM when
		// virtiofsd maps guest memory. requested-size starts at 0: the
		// sandbox plugs what its containers need once it knows.
		a.add("-object", m.memoryBackend(v.ID+"-mem", v.RegionMiB))
		a.add("-device", "virtio-mem-pci,id="+v.ID+",memdev="+v.ID+"-mem,block-size="+strconv.Itoa(v.BlockMiB)+"M,requested-size=0")
	}

	if rootMiB > 0 {
		// readonly=on: QEMU opens and maps the file read-only and the
		// region is ROM to the guest (its writes are dropped) and to
		// vhost-user back ends, which QEMU gives only writable RAM: a
		// guest cannot have virtiofsd write into the image through it.
		// share=off keeps the mapping private to this VM either way.
		// After virtio-mem's region, so that its placement is unchanged.
		a.add("-object", "memory-backend-file,id="+rootImageMemID+",mem-path="+opt(m.RootImage)+",size="+strconv.Itoa(rootMiB)+"M,share=off,readonly=on")
		a.add("-device", "virtio-pmem-pci,id="+rootImageID+",memdev="+rootImageMemID)
	}

	for _, f := range m.FwCfgFiles {
		a.add("-fw_cfg", "name="+opt(f.Name)+",file="+opt(f.Path))
	}

	a.add("-kernel", m.Kernel)
	if m.Initrd != "" { // never with RootImage: Validate refuses both
		a.add("-initrd", m.Initrd)
	}
	a.add("-append", m.KernelCmdline())

	// The console is always an ISA 16550 at 0x3f8 (ttyS0), on both
	// machines, so the guest behaves the same with and without a log.
	if m.consoleCapped() {
		// QEMU opens /dev/fdset/N by duplicating the set's descriptor.
		// QEMU 7.2 fails that open with EINVAL unless append=on (the
		// default O_TRUNC does not match the pipe's flags).
		a.add("-add-fd", "fd="+strconv.Itoa(ConsoleFD)+",set="+strconv.Itoa(consoleFdSet))
		a.add("-chardev", "file,id="+consoleID+",path=/dev/fdset/"+strconv.Itoa(consoleFdSet)+",append=on")
		a.add("-serial", "chardev:"+consoleID)
	} else if m.ConsoleLog != "" {
		a.add("-chardev", "file,id="+consoleID+",path="+opt(m.ConsoleLog))
		a.add("-serial", "chardev:"+consoleID)
	} else {
		a.add("-serial", "null")
	}

	a.add("-chardev", "socket,id="+qmpID+",path="+opt(m.QMPSocket)+",server=on,wait=off")
	a.add("-mon", "chardev="+qmpID+",mode=control")

	if len(m.SerialPorts) > 0 {
		a.add("-device", m.virtioDev("virtio-serial")+",id="+serialCtlID)
		for _, p := range m.SerialPorts {
			// wait=off: the guest boots without waiting for the host
			// side to connect; the agent connection is made later.
			a.add("-chardev", "socket,id="+chardevPrefix+p.ID+",path="+opt(p.SocketPath)+",server=on,wait=off")
			a.add("-device", "virtserialport,id="+p.ID+",chardev="+chardevPrefix+p.ID+",bus="+serialCtlID+".0,name="+opt(p.Name))
		}
	}
	for _, fs := range m.FileSystems {
		q := fs.QueueSize
		if q == 0 {
			q = DefaultFSQueueSize
		}
		a.add("-chardev", "socket,id="+chardevPrefix+fs.ID+",path="+opt(fs.SocketPath))
		a.add("-device", m.virtioDev("vhost-user-fs")+",id="+fs.ID+",chardev="+chardevPrefix+fs.ID+
			",tag="+opt(fs.Tag)+",queue-size="+strconv.Itoa(q))
	}
	m.pcieArgs(&a)
	if m.Balloon != nil {
		dev := m.virtioDev("virtio-balloon") + ",id=" + balloonID
		if m.Balloon.FreePageReporting {
			dev += ",free-page-reporting=on"
		}
		a.add("-device", dev)
	}
	m.netArgs(&a)
	if m.Vsock != nil {
		a.add("-device", m.virtioDev("vhost-vsock")+",id="+vsockID+",guest-cid="+strconv.FormatUint(uint64(m.Vsock.GuestCID), 10))
	}
	return a, nil
}

// memoryBackend is the -object for hot-plugged memory: a shared memfd when
// virtiofsd must map it, anonymous RAM otherwise. Either way the host only
// commits pages the guest touches.
func (m Machine) memoryBackend(id string, sizeMiB int) string {
	size := strconv.Itoa(sizeMiB) + "M"
	if m.sharedMemory() {
		return "memory-backend-memfd,id=" + id + ",size=" + size + ",share=on"
	}
	return "memory-backend-ram,id=" + id + ",size=" + size
}

// machineOpts is the -machine value.
//
// microvm in QEMU 7.2, verified with the Debian 6.1 cloud kernel under TCG:
//   - acpi=on: QEMU describes each virtio-mmio device in the DSDT as
//     LNRO0005 and the guest's virtio_mmio driver binds to them when the
//     module is loaded, like any ACPI driver. The alternative,
//     virtio_mmio.device= on the command line (what auto-kernel-cmdline
//     adds, and only with ACPI off), needs
//     CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, which the Debian kernel does
//     not set, and would only reach a modular driver if the initramfs
//     passed the parameters to modprobe. With ACPI on, QEMU 7.2 adds
//     nothing to the command line anyway; auto-kernel-cmdline=off makes
//     that explicit.
//   - isa-serial=on: the only console microvm has.
//   - PIT, PIC and RTC stay at their defaults (on): the kernel falls back
//     to the PIT to calibrate the TSC when tsc_early_khz is absent.
func (m Machine) machineOpts() string {
	var o string
	switch m.Type {
	case Q35:
		o = "q35"
	case MicroVM:
		o = "microvm,acpi=on,auto-kernel-cmdline=off,isa-serial=on"
	case Virt:
		// gic-version=max: GICv3 under TCG, which supports more than 8
		// vCPUs; ACPI follows from the UEFI firmware in Pflash.
		o = "virt,gic-version=max"
	}
	if m.sharedMemory() {
		o += ",memory-backend=" + ramID
	}
	return o
}

func (m Machine) sharedMemory() bool { return len(m.FileSystems) > 0 }

// virtioDev names the transport variant of a virtio device: PCI on q35,
// MMIO ("-device" suffix) on microvm.
func (m Machine) virtioDev(base string) string {
	if m.Type == MicroVM {
		return base + "-device"
	}
	return base + "-pci"
}

// KernelCmdline is the guest kernel command line: Berth's base parameters,
// then KernelParams.
//
//   - console=ttyS0: both machines have a 16550 at 0x3f8 and the 8250
//     driver is built into distribution kernels, so the log starts before
//     any module loads.
//   - panic=-1 reboot=t: on panic, reboot at once by triple fault, which
//     needs no firmware or keyboard controller and works on microvm;
//     -no-reboot turns the reboot into QEMU exiting.
//   - loglevel=6: keeps boot chatter (KERN_INFO) off the emulated serial
//     line, which is slow under TCG, but keeps notices, warnings and the
//     "Linux version" banner. KernelParams may raise it.
//   - pty.legacy_count=0: no BSD-style /dev/ptyXX pairs (containers use
//     devpts). A kernel with CONFIG_LEGACY_PTYS (Berth's) otherwise
//     registers 256 pairs at boot, and creating their device nodes cost
//     ~0.3 s of a TCG boot; other kernels ignore the parameter.
//   - tsc_early_khz (x86 under TCG): TCG's guest TSC runs at the host
//     TSC rate, so the host's frequency is the right value, and giving it
//     skips calibrating the TSC against the HPET or PIT (~50 ms of a q35
//     boot in a sampled profile, within the noise end to end), and
//     microvm (no HPET) guests under TCG have been seen to hang
//     calibrating against the PIT.
//   - noreplace-smp (x86 under TCG): a kernel that boots on one CPU
//     otherwise rewrites every `lock` prefix of its text (~4000 sites)
//     into a no-op, one text_poke each, and each poke switches page
//     tables and flushes the TLB: 0.13 s of a TCG boot (under KVM it is
//     microseconds and saves a little later). The prefixes stay; a
//     guest with more vCPUs keeps them anyway.
//   - lapic_timer_hz=1000000000 (x86): the local APIC timer's input
//     clock, 1 GHz in QEMU's emulated APIC and in KVM's. Berth's kernel
//     (guest/kernel/edits.go) then skips calibrating the timer, which
//     waits 0.1 s of every boot without a TSC-deadline timer (TCG has
//     none); other kernels do not know the parameter and hand it to
//     /init's environment, which the agent ignores.
//   - no_timer_check (x86): the kernel otherwise checks, once at boot,
//     that the timer interrupt reaches the CPU through the IO-APIC by
//     waiting up to 40e9/HZ TSC cycles for four jiffies to pass, and
//     panics ("IO-APIC + timer doesn't work!") when they do not. Under
//     TCG on a loaded host the TSC (host time) runs on while the vCPU
//     thread waits for a core and QEMU coalesces the missed PIT ticks,
//     so the check fails on a working timer: a clean-clone CI run lost a
//     boot to it with three guests booting on two cores. QEMU's and
//     KVM's timer routing is fixed and known to work (Kata passes the
//     same parameter); skipping the check also saves its 16 ms wait.
func (m Machine) KernelCmdline() string {
	console := "console=ttyS0"
	if m.Type == Virt {
		console = "console=ttyAMA0" // virt's PL011 UART
	}
	params := []string{console, "panic=-1", "reboot=t", "loglevel=6", "pty.legacy_count=0"}
	if m.Type != Virt {
		if m.Accel == TCG {
			params = append(params, "tsc_early_khz="+strconv.Itoa(hostTSCkHz()), "noreplace-smp")
		}
		params = append(params, "lapic_timer_hz="+strconv.Itoa(qemuAPICTimerHz), "no_timer_check")
	}
	if m.RootImage != "" {
		params = append(params, RootImageParams)
	}
	if p := strings.TrimSpace(m.KernelParams); p != "" {
		params = append(params, p)
	}
	return strings.Join(params, " ")
}

// RootImageParams boot the guest from Machine.RootImage: its only pmem
// device, an erofs image mounted read-only with DAX (the kernel maps the
// files' pages from the device instead of reading them into its page
// cache), and the agent as init. The kernel waits for device probing
// before it mounts the root, so no rootwait is needed (and rootwait
// would wait forever for a device that never comes).
const RootImageParams = "root=/dev/pmem0 rootfstype=erofs rootflags=dax=always ro init=/init"

// RootImageAlignMiB is what a root image's size must be a multiple of:
// QEMU maps the whole file, and the guest hot-adds the device's memory in
// 2 MiB sub-sections (guest.Build pads the image to it).
const RootImageAlignMiB = 2

// rootImageMiB is the size of the root image at path in MiB, which must
// be a positive multiple of RootImageAlignMiB: QEMU would otherwise map
// past the file's end or refuse to start.
func rootImageMiB(path string) (int, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, &FieldError{Field: "RootImage", Problem: err.Error()}
	}
	const align = RootImageAlignMiB << 20
	if !fi.Mode().IsRegular() || fi.Size() <= 0 || fi.Size()%align != 0 {
		return 0, &FieldError{Field: "RootImage", Problem: fmt.Sprintf("%s is not a regular file of a positive multiple of %d MiB (%d bytes): rebuild it with `berth guest build`", path, RootImageAlignMiB, fi.Size())}
	}
	return int(fi.Size() >> 20), nil
}

// qemuAPICTimerHz is the local APIC timer's input clock in QEMU's x86
// APIC emulation (hw/intc/apic.c counts nanoseconds) and in KVM's
// (APIC_BUS_CYCLE_NS = 1).
const qemuAPICTimerHz = 1_000_000_000

// hostTSCkHz is a variable so tests can pin it.
var hostTSCkHz = sync.OnceValue(readHostTSCkHz)

// readHostTSCkHz reads the first "cpu MHz" of /proc/cpuinfo. On hosts
// with an invariant TSC and no frequency scaling (virtual machines, most
// servers) it is the TSC rate; where it is off, the guest only starts with
// a wrong estimate that its later clocksource checks correct.
func readHostTSCkHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return fallbackTSCkHz
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || mhz <= 0 {
			break
		}
		return int(math.Round(mhz * 1000))
	}
	return fallbackTSCkHz
}

// argv collects arguments.
type argv []string

func (a *argv) add(s ...string) { *a = append(*a, s...) }

// opt escapes a value for QEMU's option syntax, where ',' separates
// key=value pairs and ",," stands for a literal comma.
func opt(s string) string { return strings.ReplaceAll(s, ",", ",,") }
