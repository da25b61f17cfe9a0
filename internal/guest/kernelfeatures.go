package guest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// KernelFeature is something Berth or the containers it runs need from the
// guest kernel, and the configuration options that provide it.
type KernelFeature struct {
	Name string
	// Options must all be built in (=y) or, for a kernel whose modules the
	// initramfs carries, modules (=m) that the agent loads.
	Options []string
	// Required features fail `berth check`; the others (what container
	// workloads commonly use) only warn.
	Required bool
	// Modules, when set, are the modules that provide the feature on a
	// kernel that has its options as modules. The guest does not load
	// modules on demand, so the feature is there only if the image packs
	// them all (DefaultModules); a module the kernel merely ships is not
	// enough.
	Modules []string
}

// KernelFeatures is what `berth check` and `berth guest info` look for in
// the guest kernel's configuration. The list follows guest/kernel's
// fragment; the Debian cloud kernel has all of it (some as modules).
var KernelFeatures = []KernelFeature{
	{"virtio PCI", []string{"CONFIG_VIRTIO_PCI"}, true, nil},
	{"virtio MMIO (microvm; QEMU describes the devices in ACPI)", []string{"CONFIG_VIRTIO_MMIO"}, true, nil},
	{"virtio-serial (agent channel)", []string{"CONFIG_VIRTIO_CONSOLE"}, true, nil},
	{"virtio-blk", []string{"CONFIG_VIRTIO_BLK"}, true, nil},
	{"virtio-fs", []string{"CONFIG_FUSE_FS", "CONFIG_VIRTIO_FS"}, true, nil},
	{"overlayfs", []string{"CONFIG_OVERLAY_FS"}, true, nil},
	{"vsock", []string{"CONFIG_VSOCKETS", "CONFIG_VIRTIO_VSOCKETS"}, true, nil},
	{"virtio-net", []string{"CONFIG_VIRTIO_NET"}, true, nil},
	{"serial console (ttyS0)", []string{"CONFIG_SERIAL_8250", "CONFIG_SERIAL_8250_CONSOLE"}, true, nil},
	{"initramfs (uncompressed newc)", []string{"CONFIG_BLK_DEV_INITRD"}, true, nil},
	{"devtmpfs, tmpfs, proc", []string{"CONFIG_DEVTMPFS", "CONFIG_TMPFS", "CONFIG_PROC_FS"}, true, nil},
	{"cgroups (memory, cpu, pids, cpuset, freezer, devices)", []string{"CONFIG_CGROUPS", "CONFIG_MEMCG", "CONFIG_MEMCG_KMEM", "CONFIG_CGROUP_SCHED",
		"CONFIG_CFS_BANDWIDTH", "CONFIG_CGROUP_PIDS", "CONFIG_CPUSETS", "CONFIG_CGROUP_FREEZER", "CONFIG_CGROUP_DEVICE", "CONFIG_CGROUP_BPF"}, true, nil},
	{"namespaces", []string{"CONFIG_NAMESPACES", "CONFIG_UTS_NS", "CONFIG_IPC_NS", "CONFIG_PID_NS", "CONFIG_NET_NS", "CONFIG_USER_NS"}, true, nil},
	{"seccomp filters", []string{"CONFIG_SECCOMP", "CONFIG_SECCOMP_FILTER"}, true, nil},
	{"memory hot-plug (movable onlining)", []string{"CONFIG_MEMORY_HOTPLUG", "CONFIG_MEMORY_HOTREMOVE"}, true, nil},
	{"ACPI DIMM hot-plug", []string{"CONFIG_ACPI_HOTPLUG_MEMORY"}, true, nil},
	{"virtio-mem", []string{"CONFIG_VIRTIO_MEM"}, true, nil},
	{"PCIe hot-plug", []string{"CONFIG_HOTPLUG_PCI_PCIE"}, true, nil},
	{"unix, inet, IPv6 sockets", []string{"CONFIG_UNIX", "CONFIG_INET", "CONFIG_IPV6"}, true, nil},
	{"virtio-balloon free page reporting", []string{"CONFIG_VIRTIO_BALLOON", "CONFIG_PAGE_REPORTING"}, false, nil},
	{"pressure stall information (elastic memory)", []string{"CONFIG_PSI"}, false, nil},
	{"full-sized core tables (pid_max above 32768, futex hash)", []string{"CONFIG_BASE_FULL"}, false, nil},
	{"PVH entry (boots uncompressed)", []string{"CONFIG_PVH"}, false, nil},
	{"root image on virtio-pmem (erofs, DAX; guest.root)", RootImageOptions, false, nil},
	{"qemu_fw_cfg", []string{"CONFIG_FW_CFG_SYSFS"}, false, nil},
	{"bridge, veth, tun", []string{"CONFIG_BRIDGE", "CONFIG_VETH", "CONFIG_TUN"}, false, []string{"bridge", "veth", "tun"}},
	{"loop devices (losetup, mount -o loop)", []string{"CONFIG_BLK_DEV_LOOP"}, false, []string{"loop"}},
	{"netfilter (iptables, nftables, NAT, conntrack)", []string{"CONFIG_NETFILTER", "CONFIG_NF_CONNTRACK", "CONFIG_NF_NAT",
		"CONFIG_NF_TABLES", "CONFIG_IP_NF_IPTABLES", "CONFIG_IP_NF_NAT"}, false,
		[]string{"nf_conntrack", "nf_nat", "nf_tables", "ip_tables", "iptable_nat"}},
	// Links and traffic control pods with NET_ADMIN set up themselves.
	{"links and tc (wireguard, dummy, ifb, geneve, netem, htb, sctp)", []string{"CONFIG_WIREGUARD", "CONFIG_DUMMY",
		"CONFIG_IFB", "CONFIG_GENEVE", "CONFIG_NET_SCH_NETEM", "CONFIG_NET_SCH_HTB", "CONFIG_NET_SCH_TBF", "CONFIG_IP_SCTP"}, false,
		[]string{"wireguard", "dummy", "ifb", "geneve", "sch_netem", "sch_htb", "sch_tbf", "sctp"}},
	// What pods' own rules use beyond the core: a service mesh's init
	// container (owner match, TPROXY, socket, CT zones in the raw table),
	// MSS clamping, rate limits, logging, IPv6 REJECT, nft's reject and
	// fib, ipsets.
	{"netfilter extensions (owner, TPROXY, CT, LOG, limit, ipset)", []string{"CONFIG_NETFILTER_XT_MATCH_OWNER",
		"CONFIG_NETFILTER_XT_MATCH_SOCKET", "CONFIG_NETFILTER_XT_TARGET_TPROXY", "CONFIG_IP_NF_RAW", "CONFIG_NETFILTER_XT_TARGET_CT",
		"CONFIG_NF_CONNTRACK_ZONES", "CONFIG_NETFILTER_XT_TARGET_LOG", "CONFIG_NETFILTER_XT_MATCH_LIMIT", "CONFIG_NETFILTER_XT_TARGET_TCPMSS",
		"CONFIG_IP6_NF_TARGET_REJECT", "CONFIG_NFT_REJECT", "CONFIG_NFT_FIB_INET", "CONFIG_IP_SET", "CONFIG_NETFILTER_XT_SET"}, false,
		[]string{"xt_owner", "xt_socket", "xt_TPROXY", "iptable_raw", "xt_CT", "xt_LOG", "xt_limit", "xt_TCPMSS",
			"ip6t_REJECT", "nft_reject", "nft_fib_inet", "ip_set", "xt_set"}},
}

// FeatureStatus is one feature as a kernel configuration has it.
type FeatureStatus struct {
	KernelFeature
	// Missing lists the options that are neither =y nor =m, then the
	// modules (as "module NAME not in the guest image") that a modular
	// feature needs and the image does not pack.
	Missing []string
	// Modular lists the options that are =m (loadable modules, which the
	// agent must load from the initramfs).
	Modular []string
}

// OK reports whether every option is built in or a module.
func (s FeatureStatus) OK() bool { return len(s.Missing) == 0 }

// CheckKernelFeatures grades a kernel configuration against KernelFeatures;
// packed are the modules the guest image loads (names or paths, as the
// manifest lists them).
func CheckKernelFeatures(cfg map[string]string, packed []string) []FeatureStatus {
	have := map[string]bool{}
	for _, m := range packed {
		have[moduleName(m)] = true
	}
	out := make([]FeatureStatus, 0, len(KernelFeatures))
	for _, f := range KernelFeatures {
		s := FeatureStatus{KernelFeature: f}
		for _, o := range f.Options {
			switch cfg[o] {
			case "y":
			case "m":
				s.Modular = append(s.Modular, o)
			default:
				s.Missing = append(s.Missing, o)
			}
		}
		if len(s.Modular) > 0 {
			for _, m := range f.Modules {
				if !have[moduleName(m)] {
					s.Missing = append(s.Missing, "module "+m+" not in the guest image")
				}
			}
		}
		out = append(out, s)
	}
	return out
}

// ParseKernelConfig reads a kernel .config into option -> value ("y",
// "m", a number or an unquoted string); "# CONFIG_X is not set" lines are
// left out.
func ParseKernelConfig(r io.Reader) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

// ReadKernelConfig reads the kernel configuration a guest image keeps
// (Artefacts.Config).
func ReadKernelConfig(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read guest kernel config: %w", err)
	}
	defer f.Close()
	return ParseKernelConfig(f), nil
}
