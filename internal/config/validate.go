package config

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Validate checks every value and every combination of values. It returns
// nil or one KeyError per problem (joined with errors.Join, so the message
// has one self-contained line per problem). errors.Is(err, ErrInvalid)
// holds for any error it returns.
//
// Validate never looks at the host: whether the QEMU binary exists or KVM
// works is internal/hostcheck's business.
func (c *Config) Validate() error {
	errs := c.problems()
	for _, e := range errs {
		e.File = c.source
	}
	return joinErrors(errs)
}

// Host is what the caller tells Load about the host, for the checks that
// depend on it; config never probes (internal/cgroup.Detect does).
type Host struct {
	// CgroupLayout is "v1", "v2", "hybrid" or "none".
	CgroupLayout string
	// Systemd is true when PID 1 is systemd.
	Systemd bool
	// MemTotalMiB is the host's RAM (MemTotal); 0 when unknown.
	MemTotalMiB int
}

// Layouts as Host.CgroupLayout spells them.
const (
	LayoutV1     = "v1"
	LayoutV2     = "v2"
	LayoutHybrid = "hybrid"
	LayoutNone   = "none"
)

// hostProblems are the combinations of settings and host that cannot
// work. They are errors at load time, naming the key and the fix, so that
// no sandbox (and no shim) ever meets them at run time.
func (c *Config) hostProblems(h Host) []*KeyError {
	errs := c.hostMemoryProblems(h)
	switch c.Cgroup.Manager {
	case CgroupManagerNone:
		return errs
	case CgroupManagerSystemd:
		if !h.Systemd {
			errs = append(errs, keyError("cgroup.manager", c.Cgroup.Manager, "needs systemd, which is not running on this host (PID 1 is not systemd)",
				`use "cgroupfs"`))
		} else if h.CgroupLayout != LayoutV2 {
			errs = append(errs, keyError("cgroup.manager", c.Cgroup.Manager, "is supported on cgroup v2 hosts only; this host is "+h.CgroupLayout,
				`use "cgroupfs" (or boot the host with systemd.unified_cgroup_hierarchy=1)`))
		}
	}
	if h.CgroupLayout == LayoutNone || h.CgroupLayout == "" {
		errs = append(errs, keyError("cgroup.manager", c.Cgroup.Manager, "needs a cgroup file system, and none is mounted on this host",
			`mount cgroup2 at /sys/fs/cgroup, or set cgroup.manager = "none" to run sandboxes without a host cgroup`))
	}
	return errs
}

// Drivers are the valid values of hypervisor.driver.
var Drivers = []string{DriverQEMU}

// problems lists what is wrong, without File set.
func (c *Config) problems() []*KeyError {
	var errs []*KeyError
	add := func(e *KeyError) {
		if e != nil {
			errs = append(errs, e)
		}
	}

	// Directories.
	add(absPath("state_dir", c.StateDir, true))
	add(absPath("run_dir", c.RunDir, true))
	if filepath.IsAbs(c.StateDir) && filepath.IsAbs(c.RunDir) &&
		filepath.Clean(c.StateDir) == filepath.Clean(c.RunDir) {
		add(keyError("run_dir", c.RunDir, "is the same directory as state_dir",
			"use separate directories: state_dir keeps guest images across reboots, run_dir (on a tmpfs such as /run) holds per-sandbox state that must not survive one"))
	}

	// [hypervisor]
	h := &c.Hypervisor
	add(oneOf("hypervisor.driver", h.Driver, Drivers...))
	add(absPath("hypervisor.path", h.Path, true))
	add(oneOf("hypervisor.machine", h.Machine, MachineQ35, MachineMicroVM, MachineVirt))
	add(oneOf("hypervisor.accel", h.Accel, AccelAuto, AccelKVM, AccelTCG))
	if h.DefaultVCPUs < 1 || h.DefaultVCPUs > MaxVCPUs {
		add(keyError("hypervisor.default_vcpus", h.DefaultVCPUs, "is out of range",
			fmt.Sprintf("use a whole number from 1 to %d", MaxVCPUs)))
	}
	switch {
	case h.DefaultMemoryMiB < MinMemoryMiB:
		add(keyError("hypervisor.default_memory", h.DefaultMemoryMiB, "is too small",
			fmt.Sprintf("the value is in MiB; use at least %d (the guest kernel and initramfs need it to boot)", MinMemoryMiB)))
	case h.DefaultMemoryMiB%2 != 0:
		add(keyError("hypervisor.default_memory", h.DefaultMemoryMiB, "is not a multiple of 2",
			fmt.Sprintf("the value is in MiB and memory is added in 2 MiB blocks; use %d or %d", h.DefaultMemoryMiB-1, h.DefaultMemoryMiB+1)))
	}
	if h.TCGTBSizeMiB < MinTCGTBSizeMiB || h.TCGTBSizeMiB > MaxTCGTBSizeMiB {
		add(keyError("hypervisor.tcg_tb_size", h.TCGTBSizeMiB, "is out of range",
			fmt.Sprintf("the value is in MiB; use a whole number from %d to %d (default %d)", MinTCGTBSizeMiB, MaxTCGTBSizeMiB, DefaultTCGTBSizeMiB)))
	}
	switch {
	case h.Firmware == FirmwareAuto || h.Firmware == FirmwareSeaBIOS:
	case h.Firmware == FirmwareQboot:
		if c.Devices.PCIBridges > 0 && h.Machine == MachineQ35 {
			add(keyError("hypervisor.firmware", h.Firmware, fmt.Sprintf("cannot serve devices.pci_bridges = %d: qboot leaves a bridge's bus unnumbered, so devices hot-plugged behind it never appear", c.Devices.PCIBridges),
				fmt.Sprintf("use %q (SeaBIOS when there are bridges) or %q, or hot-plug through PCIe root ports (devices.pcie_root_port) instead of bridges", FirmwareAuto, FirmwareSeaBIOS)))
		}
	case filepath.IsAbs(h.Firmware):
		if h.Machine != MachineQ35 {
			add(keyError("hypervisor.firmware", h.Firmware, "is a firmware image, but only machine \"q35\" takes one",
				"remove the key (microvm boots QEMU's own microvm firmware; virt takes hypervisor.pflashes)"))
		} else if st, err := os.Stat(h.Firmware); err != nil || st.IsDir() {
			add(keyError("hypervisor.firmware", h.Firmware, "does not exist or is not a file",
				fmt.Sprintf("correct the path, or use %q", FirmwareAuto)))
		}
	default:
		add(keyError("hypervisor.firmware", h.Firmware, "is neither a firmware name nor an absolute path",
			fmt.Sprintf("use %q (the default), %q, %q, or the absolute path of a firmware image", FirmwareAuto, FirmwareQboot, FirmwareSeaBIOS)))
	}
	if strings.ContainsAny(h.KernelParams, "\n\r\x00") {
		add(keyError("hypervisor.kernel_params", h.KernelParams, "contains a line break or NUL",
			"write the parameters on one line, separated by spaces"))
	}
	add(absPath("hypervisor.virtiofsd_path", h.VirtiofsdPath, true))
	add(oneOf("hypervisor.virtiofs_cache", h.VirtiofsCache, VirtiofsCacheAuto, VirtiofsCacheAlways, VirtiofsCacheNone))
	if h.BootConcurrency < 0 {
		add(keyError("hypervisor.boot_concurrency", h.BootConcurrency, "is negative", "use 0 (the host's CPUs under TCG, no limit under KVM) or a positive number of VMs"))
	}
	add(oneOf("hypervisor.scheduling", h.Scheduling, SchedulingAuto, SchedulingBatch, SchedulingNormal))
	add(positive("hypervisor.boot_timeout", h.BootTimeout, `use a positive duration such as "60s" (ten TCG boots at once on two cores take tens of seconds)`))

	add(oneOf("hypervisor.memory_hotplug", h.MemoryHotplug, MemoryHotplugAuto, MemoryHotplugVirtioMem, MemoryHotplugDIMM, MemoryHotplugNone))
	if h.DefaultMaxMemoryMiB < h.DefaultMemoryMiB {
		add(keyError("hypervisor.default_maxmemory", h.DefaultMaxMemoryMiB, "is below hypervisor.default_memory",
			fmt.Sprintf("the ceiling must be at least the boot size; use %d or more", h.DefaultMemoryMiB)))
	}
	if h.MemorySlots < 0 || h.MemorySlots > 256 {
		add(keyError("hypervisor.memory_slots", h.MemorySlots, "is out of range", "use 0 to 256 DIMM slots"))
	}
	if h.LogMaxKiB < 16 || h.LogMaxKiB > 1<<20 {
		add(keyError("hypervisor.log_max_kib", h.LogMaxKiB, "is out of range",
			"use 16 to 1048576 KiB (the default 1024 keeps 1 MiB of each log, plus one rotated file)"))
	}
	switch {
	case h.VMMUIDBase < 65536 || h.VMMUIDBase > maxUID:
		add(keyError("hypervisor.vmm_uid_base", h.VMMUIDBase, "is out of range",
			fmt.Sprintf("use a uid above every real user's and below %d; the default is %d", maxUID, DefaultVMMUIDBase)))
	case h.VMMUIDCount < 1 || h.VMMUIDBase+h.VMMUIDCount-1 > maxUID:
		add(keyError("hypervisor.vmm_uid_count", h.VMMUIDCount, "is out of range",
			fmt.Sprintf("use 1 to %d uids (at least as many as sandboxes run at once)", maxUID-h.VMMUIDBase+1)))
	}
	if h.MemoryOverheadMiB < 0 {
		add(keyError("hypervisor.memory_overhead", h.MemoryOverheadMiB, "is negative", "use 0 or more MiB"))
	}
	switch hp := c.ResolvedMemoryHotplug(); {
	case hp == MemoryHotplugVirtioMem && h.Machine == MachineMicroVM:
		add(keyError("hypervisor.memory_hotplug", h.MemoryHotplug, "cannot be virtio-mem on machine \"microvm\"",
			`QEMU 7.2's microvm cannot place virtio-mem's region; use machine = "q35", or memory_hotplug = "none"`))
	case hp == MemoryHotplugDIMM && h.MemorySlots == 0:
		add(keyError("hypervisor.memory_slots", h.MemorySlots, "is 0, but memory_hotplug is \"dimm\"",
			"give DIMM hot-plug at least one slot (the default is 8)"))
	case hp == MemoryHotplugDIMM && h.Machine == MachineVirt && len(h.Pflashes) == 0:
		// Seed 000: without UEFI firmware QEMU's arm64 virt machine has
		// no ACPI, and DIMM hot-plug fails at VM start with "memory
		// hotplug is not enabled: missing acpi-ged device" (a pod crash
		// loop). Use Debian's firmware if it is installed; fail here,
		// naming the key, if not.
		if filesExist(AAVMFPaths) {
			h.Pflashes = append([]string(nil), AAVMFPaths...)
		} else {
			add(keyError("hypervisor.pflashes", "[]", "is empty, but DIMM memory hot-plug on machine \"virt\" needs UEFI firmware (ACPI GED)",
				`install qemu-efi-aarch64, or set pflashes = ["/path/AAVMF_CODE.fd", "/path/AAVMF_VARS.fd"], or memory_hotplug = "none"`))
		}
	}
	if n := len(h.Pflashes); n != 0 && n != 2 {
		add(keyError("hypervisor.pflashes", fmt.Sprint(h.Pflashes), fmt.Sprintf("has %d images", n),
			"give two: the firmware code, then the variable store template"))
	} else {
		errs = append(errs, c.pflashesExist()...)
	}
	errs = append(errs, c.memoryBounds()...)
	add(c.machineMatchesBinary())
	for _, p := range h.Pflashes {
		add(absPath("hypervisor.pflashes", p, true))
	}
	// [devices]
	errs = append(errs, c.validateDevices()...)
	// [memory]
	errs = append(errs, c.validateMemory()...)

	// [agent]
	add(oneOf("agent.transport", c.Agent.Transport, TransportAuto, TransportVsock, TransportVirtioSerial))
	add(positive("agent.dial_timeout", c.Agent.DialTimeout, `use a positive duration such as "5s"`))

	// [guest]: "" means "under state_dir" (Load fills it in).
	add(absPath("guest.kernel", c.Guest.Kernel, false))
	add(absPath("guest.initrd", c.Guest.Initrd, false))
	if !debPackageName.MatchString(c.Guest.KernelPackage) {
		add(keyError("guest.kernel_package", c.Guest.KernelPackage, "is not a Debian package name",
			`use a package such as "linux-image-cloud-amd64" (lower case letters, digits and + - .)`))
	}
	add(oneOf("guest.kernel_source", c.Guest.KernelSource, KernelSourceDebian, KernelSourceBerth))
	add(absPath("guest.root_image", c.Guest.RootImage, false))
	add(oneOf("guest.root", c.Guest.Root, GuestRootAuto, GuestRootInitramfs, GuestRootPmem))
	if c.Guest.Root == GuestRootPmem && c.Hypervisor.Machine != MachineQ35 {
		add(keyError("guest.root", c.Guest.Root, fmt.Sprintf("needs hypervisor.machine = %q (virtio-pmem is a PCI memory device; QEMU 7.2 plugs it into q35 only), not %q", MachineQ35, c.Hypervisor.Machine),
			`set guest.root = "auto" or "initramfs"`))
	}
	if c.Guest.Root == GuestRootPmem && c.ResolvedMemoryHotplug() == MemoryHotplugDIMM {
		// QEMU places memory devices first-fit in one region: DIMMs
		// plugged after the small pmem device would start off the
		// guest's 128 MiB memory-block boundaries, and Linux refuses to
		// add such memory (measured: MemTotal unchanged after +8 GiB).
		add(keyError("guest.root", c.Guest.Root, `cannot be used with DIMM memory hot-plug: QEMU would place the DIMMs after the root image's pmem device, off the 128 MiB boundaries the guest adds memory at`,
			`set hypervisor.memory_hotplug = "virtio-mem" (q35's default), or guest.root = "auto" or "initramfs"`))
	}
	// [runtime]
	for _, k := range c.Runtime.EnableAnnotations {
		if _, ok := annotatable[k]; !ok {
			add(keyError("runtime.enable_annotations", k, "is not a key pods may set",
				"list only keys from "+quotedList(AnnotatableKeys())+"; paths and the kernel command line are never settable by pods"))
		}
	}
	// [network]
	switch c.Network.NetworkModel {
	case NetworkModelTCFilter:
	case NetworkModelMacvtap:
		add(keyError("network.network_model", c.Network.NetworkModel, "is not implemented by this Berth",
			`use network_model = "tcfilter" (the default), which works with every veth CNI creates`))
	default:
		add(oneOf("network.network_model", c.Network.NetworkModel, NetworkModelTCFilter))
	}
	// [cgroup]
	cg := &c.Cgroup
	add(oneOf("cgroup.manager", cg.Manager, CgroupManagerCgroupfs, CgroupManagerSystemd, CgroupManagerNone))
	switch cg.Manager {
	case CgroupManagerCgroupfs, CgroupManagerNone:
		if !cgroupfsPath.MatchString(cg.Parent) || strings.Contains(cg.Parent, "..") || filepath.Clean(cg.Parent) != cg.Parent {
			add(keyError("cgroup.parent", cg.Parent, "is not a cgroupfs path",
				`use an absolute, clean path below the cgroup root such as "/berth" (letters, digits, - _ . and /)`))
		}
	case CgroupManagerSystemd:
		if !systemdSlice.MatchString(cg.Parent) {
			add(keyError("cgroup.parent", cg.Parent, "is not a systemd slice",
				`with cgroup.manager = "systemd" use a slice name such as "berth.slice"`))
		}
	}
	if cg.OverheadMemoryMiB < 0 || cg.OverheadMemoryMiB > 1<<20 {
		add(keyError("cgroup.overhead_memory", cg.OverheadMemoryMiB, "is out of range",
			"the value is in MiB; use 0 to 1048576 (the default 384 covers QEMU with its 256 MiB TCG translation cache, and virtiofsd)"))
	}
	return errs
}

func filesExist(paths []string) bool {
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			return false
		}
	}
	return true
}

var (
	cgroupfsPath = regexp.MustCompile(`^(/[A-Za-z0-9_.-]+)+$`)
	systemdSlice = regexp.MustCompile(`^[A-Za-z0-9_.-]+\.slice$`)
)

// validateDevices checks [devices] and its combinations with the machine.
func (c *Config) validateDevices() []*KeyError {
	d := &c.Devices
	var errs []*KeyError
	add := func(e *KeyError) {
		if e != nil {
			errs = append(errs, e)
		}
	}
	ports := []string{PortNone, PortRoot, PortBridge, PortSwitch}
	add(oneOf("devices.cold_plug_vfio", d.ColdPlugVFIO, ports...))
	add(oneOf("devices.hot_plug_vfio", d.HotPlugVFIO, ports...))
	add(oneOf("devices.vfio_mode", d.VFIOMode, VFIOModeGuestKernel, VFIOModeVFIO))
	add(positive("devices.unplug_timeout", d.UnplugTimeout, `use a positive duration such as "20s" (a TCG guest may take seconds to release a device)`))
	inRange := func(key string, v, max int, fix string) bool {
		if v < 0 || v > max {
			add(keyError(key, v, "is out of range", fmt.Sprintf("use a whole number from 0 to %d%s", max, fix)))
			return false
		}
		return true
	}
	ok := inRange("devices.pcie_root_port", d.PCIeRootPort, MaxPCIeSlots, "")
	ok = inRange("devices.pci_bridges", d.PCIBridges, MaxPCIeSlots, " (each bridge has 31 slots)") && ok
	ok = inRange("devices.pcie_switch_port", d.PCIeSwitchPort, MaxSwitchPorts, "") && ok
	slots := d.PCIeRootPort + d.PCIBridges
	if d.PCIeSwitchPort > 0 {
		slots++
	}
	if ok && slots > MaxPCIeSlots {
		add(keyError("devices.pcie_root_port", d.PCIeRootPort, fmt.Sprintf("needs, with pci_bridges and the switch, %d root-bus slots", slots),
			fmt.Sprintf("keep pcie_root_port + pci_bridges (+1 with a switch) at or below %d; use pci_bridges (31 slots each) or pcie_switch_port for more devices", MaxPCIeSlots)))
	}
	if m := c.Hypervisor.Machine; m != MachineQ35 {
		// Berth lays out PCIe ports on q35 only (microvm has no PCI;
		// arm64 virt's layout is not planned yet). Ports are simply not
		// created there, and a container asking for a disk gets an error
		// naming hypervisor.machine.
		for _, kv := range [][2]string{{"devices.cold_plug_vfio", d.ColdPlugVFIO}, {"devices.hot_plug_vfio", d.HotPlugVFIO}} {
			if key, v := kv[0], kv[1]; v != PortNone {
				add(keyError(key, v, fmt.Sprintf("needs Berth's PCIe topology, which only machine \"q35\" has (not %q)", m), `set it to "no-port", or hypervisor.machine = "q35"`))
			}
		}
		return errs
	}
	need := map[string]struct {
		key string
		n   int
	}{PortRoot: {"devices.pcie_root_port", d.PCIeRootPort}, PortBridge: {"devices.pci_bridges", d.PCIBridges}, PortSwitch: {"devices.pcie_switch_port", d.PCIeSwitchPort}}
	if r, ok := need[d.HotPlugVFIO]; ok && r.n == 0 {
		add(keyError("devices.hot_plug_vfio", d.HotPlugVFIO, "has no port to plug into: "+r.key+" is 0",
			fmt.Sprintf("set %s to at least 1, or hot_plug_vfio to another placement", r.key)))
	}
	return errs
}

// debPackageName is Debian policy §5.6.1: at least two characters, lower
// case alphanumerics and + - ., starting with an alphanumeric.
var debPackageName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)

func absPath(key, p string, required bool) *KeyError {
	switch {
	case p == "" && !required:
		return nil
	case p == "":
		return keyError(key, p, "is empty", "set it to an absolute path")
	case !filepath.IsAbs(p):
		return keyError(key, p, "is not an absolute path",
			"use an absolute path (Berth runs from containerd's and the shim's working directories, so relative paths would point somewhere else)")
	}
	return nil
}

func oneOf(key, v string, allowed ...string) *KeyError {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return keyError(key, v, "is not supported", "use "+quotedList(allowed))
}

func positive(key string, d Duration, fix string) *KeyError {
	if d.Duration > 0 {
		return nil
	}
	return keyError(key, d, "is not positive", fix)
}

// quotedList renders ["a" "b" "c"] as `"a", "b" or "c"`.
func quotedList(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = fmt.Sprintf("%q", v)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
