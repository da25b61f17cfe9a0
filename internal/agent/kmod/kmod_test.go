package kmod

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParamsFromCmdline(t *testing.T) {
	for _, tc := range []struct {
		name, cmdline, module, want string
	}{
		{"none", "console=ttyS0 panic=-1", "virtio_mmio", ""},
		{"one", "console=ttyS0 virtio_mmio.device=4K@0xfeb00000:12 quiet", "virtio_mmio", "device=4K@0xfeb00000:12"},
		{"several in order", "virtio_mmio.device=a virtio_blk.queue_depth=8 virtio_mmio.device=b", "virtio_mmio", "device=a device=b"},
		{"dash in cmdline, underscore asked", "virtio-mmio.device=a", "virtio_mmio", "device=a"},
		{"underscore in cmdline, dash asked", "virtio_mmio.device=a", "virtio-mmio", "device=a"},
		{"flag without value", "fuse.foo overlay.redirect_dir=on", "fuse", "foo"},
		{"empty value kept", "overlay.index=", "overlay", "index="},
		{"quoted value with space", `console=ttyS0 mymod.opt="a b" x=1`, "mymod", `opt="a b"`},
		{"quoted value without space", `mymod.opt="ab"`, "mymod", "opt=ab"},
		{"whole word quoted", `"mymod.opt=a b"`, "mymod", `opt="a b"`},
		{"prefix of another module", "virtio.x=1 virtio_pci.force_legacy=1", "virtio", "x=1"},
		{"module name is a prefix only", "virtio_pci.force_legacy=1", "virtio", ""},
		{"value with dots and equals", "virtio_mmio.device=1K@0x1000:5:3 foo.bar=a=b", "foo", "bar=a=b"},
		{"stops at --", "virtio_mmio.device=a -- virtio_mmio.device=b", "virtio_mmio", "device=a"},
		{"tabs and newline", "a=1\tvsock.x=2\n", "vsock", "x=2"},
		{"no param after dot", "overlay.", "overlay", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParamsFromCmdline(tc.cmdline, tc.module); got != tc.want {
				t.Errorf("ParamsFromCmdline(%q, %q) = %q, want %q", tc.cmdline, tc.module, got, tc.want)
			}
		})
	}
}

func TestBlacklisted(t *testing.T) {
	got := blacklisted("module_blacklist=virtio-mem,fuse modprobe.blacklist=overlay quiet")
	for _, m := range []string{"virtio_mem", "fuse", "overlay"} {
		if !got[m] {
			t.Errorf("%s not blacklisted in %v", m, got)
		}
	}
	if len(got) != 3 {
		t.Errorf("blacklist = %v, want 3 entries", got)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/virtio/virtio_pci.ko":   "virtio_pci",
		"kernel/net/vmw_vsock/vsock.ko.xz":      "vsock",
		"kernel/sound/pci/hda/snd-hda-intel.ko": "snd_hda_intel",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLoadList checks the loop around finit_module: order, parameters,
// EEXIST as success, blacklisting and an error that names the module.
func TestLoadList(t *testing.T) {
	dir := t.TempDir()
	mods := []string{"kernel/a/virtio.ko", "kernel/b/virtio_mmio.ko", "kernel/c/fuse.ko", "kernel/d/overlay.ko"}
	for _, m := range mods {
		p := filepath.Join(dir, m)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	list := filepath.Join(dir, "modules.load")
	if err := os.WriteFile(list, []byte("# load order\n"+strings.Join(mods, "\n")+"\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	type call struct{ file, params string }
	var calls []call
	finitModule = func(fd int, params string, flags int) error {
		b := make([]byte, 64)
		n, _ := unix.Read(fd, b)
		calls = append(calls, call{string(b[:n]), params})
		if strings.HasSuffix(string(b[:n]), "virtio.ko") {
			return unix.EEXIST // built in or loaded before: fine
		}
		return nil
	}
	t.Cleanup(func() { finitModule = func(fd int, p string, f int) error { return unix.FinitModule(fd, p, f) } })

	err := LoadList(list, dir, "console=ttyS0 virtio-mmio.device=4K@0xd0000000:5 modprobe.blacklist=fuse")
	if err != nil {
		t.Fatalf("LoadList: %v", err)
	}
	want := []call{
		{"kernel/a/virtio.ko", ""},
		{"kernel/b/virtio_mmio.ko", "device=4K@0xd0000000:5"},
		{"kernel/d/overlay.ko", ""},
	}
	if len(calls) != len(want) {
		t.Fatalf("calls = %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Errorf("call %d = %v, want %v", i, calls[i], want[i])
		}
	}

	finitModule = func(int, string, int) error { return unix.ENOENT }
	err = LoadList(list, dir, "")
	if err == nil || !strings.Contains(err.Error(), "load module virtio:") || !strings.Contains(err.Error(), "unknown symbol") {
		t.Errorf("LoadList with failing finit_module = %v, want an error naming module virtio and the unknown symbol", err)
	}
	if err := LoadList(filepath.Join(dir, "missing"), dir, ""); err == nil {
		t.Error("LoadList on a missing list succeeded")
	}
}
