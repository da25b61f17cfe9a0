package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// writeConfig writes body to a config file in a fresh directory.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// noDefaultFile points the default path at a file that does not exist, so
// tests never read the host's /etc/berth.
func noDefaultFile(t *testing.T) {
	t.Helper()
	old := defaultPath
	defaultPath = filepath.Join(t.TempDir(), "absent.toml")
	t.Cleanup(func() { defaultPath = old })
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

// TestValidationFail is a table of files, each with one problem, and the
// key the error must name (in the manner of gVisor's TestValidationFail).
func TestValidationFail(t *testing.T) {
	for _, tc := range []struct {
		name, toml, key, want string
	}{
		{"relative state_dir", `state_dir = "var/lib/berth"`, "state_dir", "absolute path"},
		{"empty state_dir", `state_dir = ""`, "state_dir", "is empty"},
		{"relative run_dir", `run_dir = "run"`, "run_dir", "absolute path"},
		{"same dirs", "state_dir = \"/srv/berth\"\nrun_dir = \"/srv/berth/\"", "run_dir", "same directory as state_dir"},
		{"relative qemu", "[hypervisor]\npath = \"qemu-system-x86_64\"", "hypervisor.path", "absolute path"},
		{"empty qemu", "[hypervisor]\npath = \"\"", "hypervisor.path", "is empty"},
		{"machine pc", "[hypervisor]\nmachine = \"pc\"", "hypervisor.machine", `use "q35", "microvm" or "virt"`},
		{"virt without firmware (seed 000)", "[hypervisor]\npath = \"/usr/bin/qemu-system-aarch64\"\nmachine = \"virt\"\nmemory_hotplug = \"dimm\"\npflashes = [\"/nonexistent/code.fd\"]", "hypervisor.pflashes", "has 1 images"},
		{"virtio-mem on microvm", "[hypervisor]\nmachine = \"microvm\"\nmemory_hotplug = \"virtio-mem\"", "hypervisor.memory_hotplug", "microvm"},
		{"maxmemory below boot", "[hypervisor]\ndefault_memory = 512\ndefault_maxmemory = 256", "hypervisor.default_maxmemory", "below"},
		{"dimm without slots", "[hypervisor]\nmemory_hotplug = \"dimm\"\nmemory_slots = 0", "hypervisor.memory_slots", "dimm"},
		{"unknown hotplug", "[hypervisor]\nmemory_hotplug = \"balloon\"", "hypervisor.memory_hotplug", "not supported"},
		{"unknown driver", "[hypervisor]\ndriver = \"firecracker\"", "hypervisor.driver", `use "qemu"`},
		{"empty driver", "[hypervisor]\ndriver = \"\"", "hypervisor.driver", "not supported"},
		{"accel xen", "[hypervisor]\naccel = \"xen\"", "hypervisor.accel", `use "auto", "kvm" or "tcg"`},
		{"accel case", "[hypervisor]\naccel = \"KVM\"", "hypervisor.accel", "not supported"},
		{"zero vcpus", "[hypervisor]\ndefault_vcpus = 0", "hypervisor.default_vcpus", "1 to 255"},
		{"negative vcpus", "[hypervisor]\ndefault_vcpus = -1", "hypervisor.default_vcpus", "out of range"},
		{"too many vcpus", "[hypervisor]\ndefault_vcpus = 256", "hypervisor.default_vcpus", "out of range"},
		{"vcpus as string", "[hypervisor]\ndefault_vcpus = \"2\"", "hypervisor.default_vcpus", "without quotes"},
		{"vcpus as float", "[hypervisor]\ndefault_vcpus = 1.5", "hypervisor.default_vcpus", "whole number"},
		{"cold plug typo", "[devices]\ncold_plug_vfio = \"root_port\"", "devices.cold_plug_vfio", `use "no-port", "root-port", "bridge-port" or "switch-port"`},
		{"hot plug typo", "[devices]\nhot_plug_vfio = \"yes\"", "devices.hot_plug_vfio", "not supported"},
		{"vfio mode", "[devices]\nvfio_mode = \"passthrough\"", "devices.vfio_mode", `use "guest-kernel" or "vfio"`},
		{"negative root ports", "[devices]\npcie_root_port = -1", "devices.pcie_root_port", "0 to 15"},
		{"too many root ports", "[devices]\npcie_root_port = 16", "devices.pcie_root_port", "out of range"},
		{"too many slots", "[devices]\npcie_root_port = 10\npci_bridges = 5\npcie_switch_port = 1", "devices.pcie_root_port", "16 root-bus slots"},
		{"too many switch ports", "[devices]\npcie_switch_port = 33", "devices.pcie_switch_port", "0 to 32"},
		{"hot plug without bridge", "[devices]\nhot_plug_vfio = \"bridge-port\"", "devices.hot_plug_vfio", "devices.pci_bridges is 0"},
		{"hot plug without switch", "[devices]\nhot_plug_vfio = \"switch-port\"", "devices.hot_plug_vfio", "set devices.pcie_switch_port to at least 1"},
		{"hot plug without root ports", "[devices]\npcie_root_port = 0\nhot_plug_vfio = \"root-port\"", "devices.hot_plug_vfio", "pcie_root_port is 0"},
		{"vfio on microvm", "[hypervisor]\nmachine = \"microvm\"\n[devices]\ncold_plug_vfio = \"root-port\"", "devices.cold_plug_vfio", `hypervisor.machine = "q35"`},
		{"unplug timeout", "[devices]\nunplug_timeout = \"0s\"", "devices.unplug_timeout", "not positive"},
		{"elastic step zero", "[memory]\nstep = 0", "memory.step", "out of range"},
		{"elastic step odd", "[memory]\nstep = 255", "memory.step", "use 254 or 256"},
		{"elastic step huge", "[memory]\nstep = 1048576", "memory.step", "out of range"},
		{"elastic step string", "[memory]\nstep = \"256M\"", "memory.step", "whole number"},
		{"host reserve negative", "[memory]\nhost_reserve = -1", "memory.host_reserve", "out of range"},
		{"shrink delay zero", "[memory]\nshrink_delay = \"0s\"", "memory.shrink_delay", "out of range"},
		{"shrink delay too short", "[memory]\nshrink_delay = \"100ms\"", "memory.shrink_delay", "out of range"},
		{"shrink delay huge", "[memory]\nshrink_delay = \"48h\"", "memory.shrink_delay", "out of range"},
		{"elastic as string", "[memory]\nelastic = \"yes\"", "memory.elastic", ""},
		{"memory too small", "[hypervisor]\ndefault_memory = 64", "hypervisor.default_memory", "at least 128"},
		{"memory odd", "[hypervisor]\ndefault_memory = 257", "hypervisor.default_memory", "use 256 or 258"},
		{"memory in bytes string", "[hypervisor]\ndefault_memory = \"256M\"", "hypervisor.default_memory", "whole number"},
		{"firmware unknown name", "[hypervisor]\nfirmware = \"ovmf\"", "hypervisor.firmware", `use "auto" (the default), "qboot", "seabios"`},
		{"qboot with pci bridges", "[hypervisor]\nfirmware = \"qboot\"\n[devices]\npci_bridges = 1", "hypervisor.firmware", "bridges"},
		{"firmware image missing", "[hypervisor]\nfirmware = \"/nonexistent/fw.rom\"", "hypervisor.firmware", "does not exist"},
		{"firmware image on microvm", "[hypervisor]\nmachine = \"microvm\"\nfirmware = \"/usr/share/qemu/qboot.rom\"", "hypervisor.firmware", "only machine \"q35\""},
		{"kernel params newline", "[hypervisor]\nkernel_params = \"quiet\\ndebug\"", "hypervisor.kernel_params", "one line"},
		{"relative virtiofsd", "[hypervisor]\nvirtiofsd_path = \"virtiofsd\"", "hypervisor.virtiofsd_path", "absolute path"},
		{"virtiofs cache", "[hypervisor]\nvirtiofs_cache = \"never\"", "hypervisor.virtiofs_cache", `"auto", "always" or "none"`},
		{"vmm uid base in user range", "[hypervisor]\nvmm_uid_base = 1000", "hypervisor.vmm_uid_base", "out of range"},
		{"vmm uid range past the top", "[hypervisor]\nvmm_uid_base = 4294967000\nvmm_uid_count = 65536", "hypervisor.vmm_uid_count", "out of range"},
		{"log cap too small", "[hypervisor]\nlog_max_kib = 0", "hypervisor.log_max_kib", "out of range"},
		{"boot timeout zero", "[hypervisor]\nboot_timeout = \"0s\"", "hypervisor.boot_timeout", "not positive"},
		{"boot timeout negative", "[hypervisor]\nboot_timeout = \"-5s\"", "hypervisor.boot_timeout", "not positive"},
		{"boot timeout no unit", "[hypervisor]\nboot_timeout = 60", "hypervisor.boot_timeout", "with a unit"},
		{"boot timeout words", "[hypervisor]\nboot_timeout = \"1 minute\"", "hypervisor.boot_timeout", "not a duration"},
		{"transport", "[agent]\ntransport = \"tcp\"", "agent.transport", `"auto", "vsock" or "virtio-serial"`},
		{"dial timeout", "[agent]\ndial_timeout = \"0s\"", "agent.dial_timeout", "not positive"},
		{"network model", "[network]\nnetwork_model = \"bridge\"", "network.network_model", `use "tcfilter"`},
		{"macvtap", "[network]\nnetwork_model = \"macvtap\"", "network.network_model", "not implemented"},
		{"relative kernel", "[guest]\nkernel = \"vmlinuz\"", "guest.kernel", "absolute path"},
		{"relative initrd", "[guest]\ninitrd = \"./initramfs.img\"", "guest.initrd", "absolute path"},
		{"negative boot concurrency", "[hypervisor]\nboot_concurrency = -1", "hypervisor.boot_concurrency", "is negative"},
		{"unknown scheduling", "[hypervisor]\nscheduling = \"fifo\"", "hypervisor.scheduling", `"auto", "batch" or "normal"`},
		{"relative root image", "[guest]\nroot_image = \"root.erofs\"", "guest.root_image", "absolute path"},
		{"guest root", "[guest]\nroot = \"disk\"", "guest.root", `"auto", "initramfs" or "pmem"`},
		{"pmem root with dimms", "[hypervisor]\nmemory_hotplug = \"dimm\"\n[guest]\nroot = \"pmem\"", "guest.root", "DIMM memory hot-plug"},
		{"pmem root on microvm", "[hypervisor]\nmachine = \"microvm\"\n[guest]\nroot = \"pmem\"", "guest.root", `needs hypervisor.machine = "q35"`},
		{"empty kernel package", "[guest]\nkernel_package = \"\"", "guest.kernel_package", "Debian package"},
		{"bad kernel package", "[guest]\nkernel_package = \"Linux Image\"", "guest.kernel_package", "Debian package"},
		{"unknown top key", "statedir = \"/x\"", "statedir", "did you mean state_dir?"},
		{"unknown hypervisor key", "[hypervisor]\nvcpus = 2", "hypervisor.vcpus", "did you mean hypervisor.default_vcpus?"},
		{"unknown memory key", "[hypervisor]\nmemory = 512", "hypervisor.memory", "did you mean hypervisor.memory_slots?"},
		{"misspelt table", "[hypervisr]\nmachine = \"q35\"", "hypervisr", "did you mean hypervisor?"},
		{"wrong case", "[hypervisor]\nMachine = \"q35\"", "hypervisor.Machine", "did you mean hypervisor.machine?"},
		{"unrelated key", "colour = \"blue\"", "colour", "remove it"},
		{"table as value", "hypervisor = 5", "hypervisor", "not a table"},
		{"string as list", "state_dir = [\"/a\"]", "state_dir", "quoted string"},
		{"cgroup manager", "[cgroup]\nmanager = \"cgroupv2\"", "cgroup.manager", `use "cgroupfs", "systemd" or "none"`},
		{"cgroup parent relative", "[cgroup]\nparent = \"berth\"", "cgroup.parent", "absolute, clean path"},
		{"cgroup parent dotdot", "[cgroup]\nparent = \"/a/../b\"", "cgroup.parent", "not a cgroupfs path"},
		{"cgroup parent root", "[cgroup]\nparent = \"/\"", "cgroup.parent", "not a cgroupfs path"},
		{"cgroup parent trailing slash", "[cgroup]\nparent = \"/berth/\"", "cgroup.parent", "not a cgroupfs path"},
		{"systemd parent is a path", "[cgroup]\nmanager = \"systemd\"\nparent = \"/berth\"", "cgroup.parent", `slice name such as "berth.slice"`},
		{"overhead negative", "[cgroup]\noverhead_memory = -1", "cgroup.overhead_memory", "out of range"},
		{"overhead string", "[cgroup]\noverhead_memory = \"256M\"", "cgroup.overhead_memory", "whole number"},
		{"cgroup only string", "[cgroup]\nsandbox_cgroup_only = \"yes\"", "cgroup.sandbox_cgroup_only", "wrong type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.toml+"\n")
			cfg, err := Load(path, Overrides{})
			if err == nil {
				t.Fatalf("Load succeeded (%+v); want an error naming %s", cfg, tc.key)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			kes := KeyErrors(err)
			if len(kes) != 1 {
				t.Fatalf("got %d key errors, want 1: %v", len(kes), err)
			}
			ke := kes[0]
			if ke.Key != tc.key {
				t.Errorf("Key = %q, want %q (error: %v)", ke.Key, tc.key, err)
			}
			if ke.File != path {
				t.Errorf("File = %q, want %q", ke.File, path)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("message is not one line: %q", msg)
			}
			if !strings.HasPrefix(msg, "config "+path+": "+tc.key) {
				t.Errorf("message %q does not start with the file and key", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not contain %q", msg, tc.want)
			}
		})
	}
}

func TestValidationOK(t *testing.T) {
	for _, tc := range []struct{ name, toml string }{
		{"empty", ""},
		{"microvm tcg", "[hypervisor]\nmachine = \"microvm\"\naccel = \"tcg\""},
		{"limits", "[hypervisor]\ndefault_vcpus = 255\ndefault_memory = 128"},
		{"kvm vsock", "[hypervisor]\naccel = \"kvm\"\n[agent]\ntransport = \"vsock\""},
		{"virtio-serial", "[agent]\ntransport = \"virtio-serial\"\ndial_timeout = \"500ms\""},
		{"tcfilter", "[network]\nnetwork_model = \"tcfilter\""},
		{"cache none", "[hypervisor]\nvirtiofs_cache = \"none\"\nboot_timeout = \"2m\""},
		{"guest paths", "[guest]\nkernel = \"/boot/vmlinuz\"\ninitrd = \"/boot/initrd.img\"\nkernel_package = \"linux-image-6.1.0-30-cloud-amd64\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Load(writeConfig(t, tc.toml+"\n"), Overrides{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestAllProblemsReported(t *testing.T) {
	path := writeConfig(t, "[hypervisor]\nmachine = \"pc\"\naccel = \"xen\"\ndefault_vcpus = 0\n")
	_, err := Load(path, Overrides{})
	var keys []string
	for _, ke := range KeyErrors(err) {
		keys = append(keys, ke.Key)
	}
	want := []string{"hypervisor.machine", "hypervisor.accel", "hypervisor.default_vcpus"}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("keys = %v, want %v (error: %v)", keys, want, err)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 3 {
		t.Errorf("message has %d lines, want 3:\n%v", n, err)
	}
}

func TestUnknownKeyDoesNotHideBadValues(t *testing.T) {
	path := writeConfig(t, "[hypervisor]\nvcpus = 3\nmachine = \"pc\"\n")
	_, err := Load(path, Overrides{})
	var keys []string
	for _, ke := range KeyErrors(err) {
		keys = append(keys, ke.Key)
	}
	if want := []string{"hypervisor.vcpus", "hypervisor.machine"}; !reflect.DeepEqual(keys, want) {
		t.Fatalf("keys = %v, want %v (error: %v)", keys, want, err)
	}
}

func TestKeyErrorFormat(t *testing.T) {
	e := &KeyError{File: "/etc/berth/config.toml", Key: "hypervisor.machine", Value: `"pc"`,
		Problem: "is not supported", Fix: `use "q35" or "microvm"`}
	want := `config /etc/berth/config.toml: hypervisor.machine = "pc" is not supported; use "q35" or "microvm"`
	if got := e.Error(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	e.File = ""
	if got := e.Error(); !strings.HasPrefix(got, "config: hypervisor.machine") {
		t.Errorf("defaults error = %q", got)
	}
}

func TestValidateNamesSource(t *testing.T) {
	cfg := Default()
	cfg.Hypervisor.Machine = "pc"
	err := cfg.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "config: hypervisor.machine") {
		t.Fatalf("Validate() = %v", err)
	}
}

func TestMissingDefaultFileMeansDefaults(t *testing.T) {
	noDefaultFile(t)
	cfg, err := Load("", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Source() != "" {
		t.Errorf("Source() = %q, want \"\" (defaults)", cfg.Source())
	}
	want := Default()
	want.Guest.Kernel = "/var/lib/berth/guest/vmlinuz"
	want.Guest.Initrd = "/var/lib/berth/guest/initramfs.img"
	want.Guest.RootImage = "/var/lib/berth/guest/root.erofs"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Load with no file = %+v\nwant %+v", cfg, want)
	}
	if cfg.Hypervisor.BootTimeout.Duration != 60*time.Second || cfg.Agent.DialTimeout.Duration != 5*time.Second {
		t.Errorf("timeouts = %v, %v", cfg.Hypervisor.BootTimeout, cfg.Agent.DialTimeout)
	}
}

func TestDefaultPathIsRead(t *testing.T) {
	p := writeConfig(t, "[hypervisor]\ndefault_vcpus = 2\n")
	old := defaultPath
	defaultPath = p
	t.Cleanup(func() { defaultPath = old })
	cfg, err := Load("", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hypervisor.DefaultVCPUs != 2 || cfg.Source() != p {
		t.Errorf("vcpus = %d, source = %q", cfg.Hypervisor.DefaultVCPUs, cfg.Source())
	}
	if cfg.Hypervisor.Machine != MachineQ35 {
		t.Errorf("a key absent from the file lost its default: machine = %q", cfg.Hypervisor.Machine)
	}
}

func TestMissingExplicitFileIsError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(p, Overrides{})
	if err == nil {
		t.Fatal("Load of a missing explicit file succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Errorf("err = %v; want not-exist naming %s", err, p)
	}
}

func TestSyntaxError(t *testing.T) {
	p := writeConfig(t, "[hypervisor\nmachine = \"q35\"\n")
	_, err := Load(p, Overrides{})
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "line ") {
		t.Fatalf("err = %v; want an invalid-TOML error with a line number", err)
	}
}

func TestRoundTrip(t *testing.T) {
	noDefaultFile(t)
	for _, tc := range []struct{ name, toml string }{
		{"defaults", ""},
		{"everything set", `
state_dir = "/srv/berth"
run_dir = "/run/berth-test"
[hypervisor]
path = "/opt/qemu/bin/qemu-system-x86_64"
machine = "microvm"
accel = "tcg"
default_vcpus = 4
default_memory = 2048
kernel_params = "quiet console=hvc0"
virtiofsd_path = "/usr/libexec/virtiofsd"
virtiofs_cache = "none"
boot_timeout = "1m30s"
[agent]
transport = "virtio-serial"
dial_timeout = "750ms"
[guest]
kernel = "/boot/vmlinuz-test"
initrd = "/boot/initrd-test"
kernel_package = "linux-image-amd64"
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.toml != "" {
				path = writeConfig(t, tc.toml)
			}
			first, err := Load(path, Overrides{})
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := first.Marshal(&buf); err != nil {
				t.Fatal(err)
			}
			p2 := writeConfig(t, buf.String())
			second, err := Load(p2, Overrides{})
			if err != nil {
				t.Fatalf("reloading marshalled config: %v\n%s", err, buf.String())
			}
			first.source, second.source = "", ""
			if !reflect.DeepEqual(first, second) {
				t.Errorf("round trip changed the config:\nfirst  %+v\nsecond %+v\nTOML:\n%s", first, second, buf.String())
			}
		})
	}
}

func TestStateDirOverrideMovesGuestPaths(t *testing.T) {
	noDefaultFile(t)
	cfg, err := Load("", Overrides{StateDir: "/tmp/berth-state"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != "/tmp/berth-state" {
		t.Errorf("StateDir = %q", cfg.StateDir)
	}
	if got, want := cfg.Guest.Kernel, "/tmp/berth-state/guest/vmlinuz"; got != want {
		t.Errorf("Guest.Kernel = %q, want %q", got, want)
	}
	if got, want := cfg.Guest.Initrd, "/tmp/berth-state/guest/initramfs.img"; got != want {
		t.Errorf("Guest.Initrd = %q, want %q", got, want)
	}
	if cfg.ResolvedKernel() != cfg.Guest.Kernel || cfg.ResolvedInitrd() != cfg.Guest.Initrd {
		t.Errorf("Resolved* disagree with the filled fields")
	}

	// The override beats the file's state_dir; explicit guest paths stay.
	p := writeConfig(t, "state_dir = \"/srv/berth\"\n[guest]\ninitrd = \"/boot/initrd.img\"\n")
	cfg, err = Load(p, Overrides{StateDir: "/tmp/other"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Guest.Kernel != "/tmp/other/guest/vmlinuz" || cfg.Guest.Initrd != "/boot/initrd.img" {
		t.Errorf("kernel = %q, initrd = %q", cfg.Guest.Kernel, cfg.Guest.Initrd)
	}
}

func TestBadStateDirOverrideIsValidated(t *testing.T) {
	noDefaultFile(t)
	_, err := Load("", Overrides{StateDir: "relative/dir"})
	kes := KeyErrors(err)
	if len(kes) != 1 || kes[0].Key != "state_dir" || !strings.Contains(kes[0].File, "--state-dir") {
		t.Fatalf("err = %v; want one state_dir error attributed to the override", err)
	}
}

func TestResolvedPathsOnDefault(t *testing.T) {
	c := Default()
	c.StateDir = "/x"
	if c.ResolvedKernel() != "/x/guest/vmlinuz" || c.ResolvedInitrd() != "/x/guest/initramfs.img" {
		t.Errorf("ResolvedKernel = %q, ResolvedInitrd = %q", c.ResolvedKernel(), c.ResolvedInitrd())
	}
}

func TestClosestKey(t *testing.T) {
	for in, want := range map[string]string{
		"hypervisor.machin":     "hypervisor.machine",
		"hypervisor.vcpus":      "hypervisor.default_vcpus",
		"hypervisor.virtiofsd":  "hypervisor.virtiofsd_path",
		"agent.timeout":         "agent.dial_timeout",
		"rundir":                "run_dir",
		"guest.kernel_pkg":      "guest.kernel_package",
		"completely_unrelated!": "",
	} {
		if got := closestKey(in); got != want {
			t.Errorf("closestKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEveryKeyDocumented keeps docs/configuration.md in step with the
// schema: each key must appear there in backquotes.
func TestEveryKeyDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Skipf("docs not found: %v", err)
	}
	for key, typ := range keyTypes() {
		if typ == "table" {
			key = "[" + key + "]"
		}
		if !bytes.Contains(doc, []byte("`"+key+"`")) {
			t.Errorf("docs/configuration.md does not document `%s`", key)
		}
	}
}

// TestDocExamplesLoad loads every ```toml block of docs/configuration.md,
// so the examples there stay valid.
func TestDocExamplesLoad(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Skipf("docs not found: %v", err)
	}
	blocks := strings.Split(string(doc), "```toml\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("no ```toml examples in docs/configuration.md")
	}
	for i, b := range blocks {
		body, _, _ := strings.Cut(b, "```")
		if _, err := Load(writeConfig(t, body), Overrides{}); err != nil {
			t.Errorf("example %d does not load: %v\n%s", i+1, err, body)
		}
	}
}

// TestDeviceCombinationsLoad crosses machine x vfio_mode x cold_plug_vfio x
// hot_plug_vfio: every cell loads, or fails with an error naming a
// [devices] key and a fix; none panics.
func TestDeviceCombinationsLoad(t *testing.T) {
	noDefaultFile(t)
	ports := []string{PortNone, PortRoot, PortBridge, PortSwitch}
	for _, machine := range []string{MachineQ35, MachineMicroVM} {
		for _, mode := range []string{VFIOModeVFIO, VFIOModeGuestKernel} {
			for _, cold := range ports {
				for _, hot := range ports {
					body := fmt.Sprintf("[hypervisor]\nmachine = %q\n[devices]\nvfio_mode = %q\ncold_plug_vfio = %q\nhot_plug_vfio = %q\npci_bridges = 1\npcie_switch_port = 2\n",
						machine, mode, cold, hot)
					_, err := Load(writeConfig(t, body), Overrides{})
					wantErr := machine == MachineMicroVM && (cold != PortNone || hot != PortNone)
					if (err != nil) != wantErr {
						t.Errorf("%s/%s/cold=%s/hot=%s: Load = %v, want error %v", machine, mode, cold, hot, err, wantErr)
						continue
					}
					if err != nil && !strings.Contains(err.Error(), "devices.") {
						t.Errorf("%s/%s/cold=%s/hot=%s: error does not name a [devices] key: %v", machine, mode, cold, hot, err)
					}
				}
			}
		}
	}
}

// TestEffectiveFirmwareAutoAvoidsQbootWithBridges: "auto" boots qboot, but
// SeaBIOS when the VM has PCI bridges, whose hot-plugged devices only
// appear when the firmware numbered the bridge's bus; a named choice is
// kept as it is.
func TestEffectiveFirmwareAutoAvoidsQbootWithBridges(t *testing.T) {
	for _, c := range []struct {
		firmware string
		bridges  int
		want     string
	}{
		{FirmwareAuto, 0, FirmwareQboot},
		{FirmwareAuto, 1, FirmwareSeaBIOS},
		{FirmwareSeaBIOS, 0, FirmwareSeaBIOS},
		{FirmwareQboot, 0, FirmwareQboot},
		{"/opt/fw.rom", 2, "/opt/fw.rom"},
	} {
		h := Hypervisor{Firmware: c.firmware}
		if got := h.EffectiveFirmware(Devices{PCIBridges: c.bridges, ColdPlugVFIO: PortNone, HotPlugVFIO: PortNone}); got != c.want {
			t.Errorf("firmware %q with %d bridges: %q, want %q", c.firmware, c.bridges, got, c.want)
		}
	}
}

// TestEffectiveFirmwareAutoKeepsSeaBIOSWithVFIO: with VFIO enabled (cold or
// hot), "auto" boots SeaBIOS, which assigns passed-through devices' BARs.
func TestEffectiveFirmwareAutoKeepsSeaBIOSWithVFIO(t *testing.T) {
	h := Hypervisor{Firmware: FirmwareAuto}
	for _, d := range []Devices{
		{ColdPlugVFIO: PortRoot, HotPlugVFIO: PortNone},
		{ColdPlugVFIO: PortNone, HotPlugVFIO: PortRoot},
	} {
		if got := h.EffectiveFirmware(d); got != FirmwareSeaBIOS {
			t.Errorf("cold_plug_vfio %q, hot_plug_vfio %q: %q, want %q", d.ColdPlugVFIO, d.HotPlugVFIO, got, FirmwareSeaBIOS)
		}
	}
}

func TestBootsRootImageFollowsGuestRoot(t *testing.T) {
	for _, c := range []struct {
		root, machine, hotplug string
		exists, want           bool
	}{
		{GuestRootAuto, MachineQ35, MemoryHotplugAuto, true, true},
		{GuestRootAuto, MachineQ35, MemoryHotplugAuto, false, false},
		{GuestRootAuto, MachineQ35, MemoryHotplugNone, true, true},
		// DIMMs placed after the pmem device would be off the guest's
		// memory-block boundaries.
		{GuestRootAuto, MachineQ35, MemoryHotplugDIMM, true, false},
		{GuestRootAuto, MachineMicroVM, MemoryHotplugAuto, true, false},
		{GuestRootInitramfs, MachineQ35, MemoryHotplugAuto, true, false},
		// Missing, but asked for: the caller reports it.
		{GuestRootPmem, MachineQ35, MemoryHotplugAuto, false, true},
	} {
		cfg := Default()
		cfg.Guest.Root, cfg.Hypervisor.Machine, cfg.Hypervisor.MemoryHotplug = c.root, c.machine, c.hotplug
		if got := cfg.BootsRootImage(c.exists); got != c.want {
			t.Errorf("root %s, machine %s, hot-plug %s, image exists %v: BootsRootImage = %v, want %v", c.root, c.machine, c.hotplug, c.exists, got, c.want)
		}
	}
}

func TestBootSlotsLimitTCGBootsToTheCPUs(t *testing.T) {
	h := Default().Hypervisor
	if got := h.BootSlots(true); got != runtime.NumCPU() {
		t.Errorf("default under TCG: %d slots, want the %d CPUs", got, runtime.NumCPU())
	}
	if got := h.BootSlots(false); got != 0 {
		t.Errorf("default under KVM: %d slots, want 0 (no limit)", got)
	}
	h.BootConcurrency = 3
	if h.BootSlots(true) != 3 || h.BootSlots(false) != 3 {
		t.Errorf("boot_concurrency = 3: %d (TCG), %d (KVM) slots", h.BootSlots(true), h.BootSlots(false))
	}
}

func TestBatchSchedulingIsForEmulatedVCPUsUnlessSet(t *testing.T) {
	for _, c := range []struct {
		scheduling string
		tcg, want  bool
	}{
		{SchedulingAuto, true, true},
		{SchedulingAuto, false, false},
		{SchedulingBatch, false, true},
		{SchedulingNormal, true, false},
	} {
		h := Default().Hypervisor
		h.Scheduling = c.scheduling
		if got := h.Batch(c.tcg); got != c.want {
			t.Errorf("scheduling %q, TCG %v: Batch = %v, want %v", c.scheduling, c.tcg, got, c.want)
		}
	}
}
