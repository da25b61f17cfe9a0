package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadTimeBounds: each of these passed load and failed in QEMU (or
// in a pod); now each is a load-time error naming the key and the fix.
func TestLoadTimeBounds(t *testing.T) {
	dir := t.TempDir()
	code, vars := filepath.Join(dir, "code.fd"), filepath.Join(dir, "vars.fd")
	os.WriteFile(code, []byte("x"), 0o644)
	os.WriteFile(vars, []byte("x"), 0o644)
	host := &Host{CgroupLayout: LayoutV2, MemTotalMiB: 24 << 10}
	for _, tc := range []struct {
		name, toml string
		host       *Host
		key, want  string // want "" : loads
	}{
		{"memory in KiB (phys-bits too low)", "[hypervisor]\ndefault_memory = 1048576\ndefault_maxmemory = 1048576", nil, "hypervisor.default_memory", "in MiB, not bytes or KiB"},
		{"maxmemory beyond the address space", "[hypervisor]\ndefault_maxmemory = 1048576", nil, "hypervisor.default_maxmemory", "phys-bits too low"},
		{"maxmemory at the bound", "[hypervisor]\ndefault_maxmemory = 524288", nil, "", ""},
		{"boot memory above host RAM", "[hypervisor]\ndefault_memory = 32768\ndefault_maxmemory = 32768", host, "hypervisor.default_memory", "more than this host's 24576 MiB"},
		{"boot memory within host RAM", "[hypervisor]\ndefault_memory = 8192", host, "", ""},
		{"virt on the x86 binary", "[hypervisor]\nmachine = \"virt\"\nmemory_hotplug = \"none\"", nil, "hypervisor.machine", "qemu-system-aarch64"},
		{"q35 on the arm binary", "[hypervisor]\npath = \"/usr/bin/qemu-system-aarch64\"\nmachine = \"q35\"", nil, "hypervisor.machine", "not a machine of qemu-system-aarch64"},
		{"virt on the arm binary", "[hypervisor]\npath = \"/usr/bin/qemu-system-aarch64\"\nmachine = \"virt\"\nmemory_hotplug = \"none\"", nil, "", ""},
		{"a wrapper is not judged", "[hypervisor]\npath = \"/usr/local/bin/my-qemu\"\nmachine = \"virt\"\nmemory_hotplug = \"none\"", nil, "", ""},
		{"missing pflash", "[hypervisor]\npflashes = [\"" + code + "\", \"/nonexistent/vars.fd\"]", nil, "hypervisor.pflashes", "does not exist"},
		{"pflash is a directory", "[hypervisor]\npflashes = [\"" + code + "\", \"" + dir + "\"]", nil, "hypervisor.pflashes", "install the firmware package"},
		{"pflashes exist", "[hypervisor]\npflashes = [\"" + code + "\", \"" + vars + "\"]", nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.toml+"\n"), Overrides{Host: tc.host})
			if tc.key == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Load succeeded; want an error naming %s", tc.key)
			}
			for _, ke := range KeyErrors(err) {
				if ke.Key == tc.key && strings.Contains(ke.Error(), tc.want) {
					return
				}
			}
			t.Fatalf("Load: %v; want a %s error saying %q", err, tc.key, tc.want)
		})
	}
}

// TestAnnotationsGetHostChecksAndPlainErrors: a pod cannot boot a VM
// larger than the host, and a malformed number says what is expected,
// not strconv's words.
func TestAnnotationsGetHostChecksAndPlainErrors(t *testing.T) {
	cfg, err := Load(writeConfig(t, "[runtime]\nenable_annotations = [\"hypervisor.default_memory\", \"hypervisor.default_vcpus\"]\n"),
		Overrides{Host: &Host{CgroupLayout: LayoutV2, MemTotalMiB: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.WithAnnotations(map[string]string{AnnotationPrefix + "hypervisor.default_memory": "8192"})
	if err == nil || !strings.Contains(err.Error(), "more than this host's 4096 MiB") {
		t.Fatalf("8 GiB pod on a 4 GiB host: %v", err)
	}
	for _, v := range []string{"1G", "two", ""} {
		for _, key := range []string{"hypervisor.default_memory", "hypervisor.default_vcpus"} {
			_, err := cfg.WithAnnotations(map[string]string{AnnotationPrefix + key: v})
			if err == nil || strings.Contains(err.Error(), "strconv") || !strings.Contains(err.Error(), "not a whole number") {
				t.Errorf("%s = %q: %v", key, v, err)
			}
		}
	}
}
