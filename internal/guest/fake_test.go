package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// writeELF writes a minimal little-endian ELF64 file of the given type and
// machine, with the given sections and, if interp is set, a PT_INTERP
// program header. It is enough for debug/elf, which is all Build reads.
func writeELF(t *testing.T, path string, typ elf.Type, machine elf.Machine, sections map[string][]byte, interp bool) {
	t.Helper()
	names := []string{}
	for n := range sections {
		names = append(names, n)
	}
	// Layout: header, [phdr], section data..., shstrtab, section headers.
	var data bytes.Buffer
	const ehsize, phsize, shsize = 64, 56, 64
	phnum := 0
	if interp {
		phnum = 1
	}
	off := uint64(ehsize + phnum*phsize)
	shstr := []byte{0}
	var shdrs []elf.Section64
	shdrs = append(shdrs, elf.Section64{}) // the null section
	for _, n := range names {
		shdrs = append(shdrs, elf.Section64{Name: uint32(len(shstr)), Type: uint32(elf.SHT_PROGBITS), Off: off + uint64(data.Len()), Size: uint64(len(sections[n])), Addralign: 1})
		shstr = append(append(shstr, n...), 0)
		data.Write(sections[n])
	}
	interpOff := off + uint64(data.Len())
	data.WriteString("/lib64/ld-linux-x86-64.so.2\x00")
	shstrNameOff := uint32(len(shstr))
	shstr = append(append(shstr, ".shstrtab"...), 0)
	shdrs = append(shdrs, elf.Section64{Name: shstrNameOff, Type: uint32(elf.SHT_STRTAB), Off: off + uint64(data.Len()), Size: uint64(len(shstr)), Addralign: 1})
	data.Write(shstr)
	shoff := off + uint64(data.Len())

	var out bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(typ), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Shoff: shoff, Ehsize: ehsize, Phentsize: phsize, Phnum: uint16(phnum),
		Shentsize: shsize, Shnum: uint16(len(shdrs)), Shstrndx: uint16(len(shdrs) - 1),
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	if interp {
		hdr.Phoff = ehsize
	}
	binary.Write(&out, binary.LittleEndian, &hdr)
	if interp {
		binary.Write(&out, binary.LittleEndian, &elf.Prog64{Type: uint32(elf.PT_INTERP), Off: interpOff, Filesz: 28, Memsz: 28, Align: 1})
	}
	out.Write(data.Bytes())
	for i := range shdrs {
		binary.Write(&out, binary.LittleEndian, &shdrs[i])
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
}

// writeStaticAgent writes something checkAgent accepts as a static amd64
// agent; content makes agents with different hashes.
func writeStaticAgent(t *testing.T, path, content string) {
	writeELF(t, path, elf.ET_EXEC, elf.EM_X86_64, map[string][]byte{".text": []byte(content)}, false)
}

// fakeModules is the fake kernel's modules and their .modinfo depends.
var fakeModules = map[string]string{
	"kernel/drivers/virtio/virtio.ko":                "",
	"kernel/drivers/virtio/virtio_ring.ko":           "",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko": "",
	"kernel/drivers/virtio/virtio_pci.ko":            "virtio_ring,virtio_pci_modern_dev,virtio",
	"kernel/fs/fuse/fuse.ko":                         "",
	"kernel/fs/fuse/virtiofs.ko":                     "fuse,virtio,virtio_ring",
	"kernel/drivers/char/virtio_console.ko":          "virtio,virtio_ring",
}

// writeFakeKernelTree lays out an extracted kernel package under root, with
// no modules.dep (as Debian ships it), and returns its lib/modules/<kver>.
func writeFakeKernelTree(t *testing.T, root, kver string) string {
	t.Helper()
	modDir := filepath.Join(root, "lib/modules", kver)
	for p, deps := range fakeModules {
		info := "license=GPL\x00depends=" + deps + "\x00name=" + moduleName(p) + "\x00"
		writeELF(t, filepath.Join(modDir, p), elf.ET_REL, elf.EM_X86_64, map[string][]byte{".modinfo": []byte(info)}, false)
	}
	files := map[string]string{
		filepath.Join(modDir, "modules.builtin"):   "kernel/fs/overlayfs/overlay.ko\n",
		filepath.Join(root, "boot/vmlinuz-"+kver):  "fake bzImage " + kver,
		filepath.Join(root, "boot/config-"+kver):   "CONFIG_MEMORY_HOTPLUG=y\nCONFIG_VIRTIO_MEM=m\n",
		filepath.Join(root, "usr/share/doc/x/foo"): "docs are ignored",
	}
	for p, c := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return modDir
}

// fakeSource stands in for apt: one package whose "download" is a marker
// file and whose extraction writes a fake kernel tree.
type fakeSource struct {
	t                  *testing.T
	pkg                debPackage
	fetches, downloads int
	lookups            int
	extracts           int
	// config, if set, replaces the kernel configuration of the tree.
	config string
}

func newFakeSource(t *testing.T) *fakeSource {
	return &fakeSource{t: t, pkg: debPackage{Name: "linux-image-6.1.0-99-test-amd64", Version: "6.1.999-1", Arch: "amd64"}}
}

func (f *fakeSource) resolve(ctx context.Context, name string, progress func(string, ...any)) (debPackage, error) {
	return f.pkg, nil
}

func (f *fakeSource) lookup(ctx context.Context, name string) (debPackage, error) {
	f.lookups++
	return debPackage{Name: name, Version: "1.0-1", Arch: "amd64"}, nil
}

func (f *fakeSource) fetch(ctx context.Context, p debPackage, cacheDir string) (string, bool, error) {
	f.fetches++
	deb := filepath.Join(cacheDir, p.fileName())
	if _, err := os.Stat(deb); err == nil {
		return deb, true, nil
	}
	f.downloads++
	return deb, false, os.WriteFile(deb, []byte("deb"), 0o644)
}

func (f *fakeSource) extract(ctx context.Context, deb, dir string) error {
	f.extracts++
	writeFakeKernelTree(f.t, dir, "6.1.0-99-test-amd64")
	if f.config != "" {
		return os.WriteFile(filepath.Join(dir, "boot/config-6.1.0-99-test-amd64"), []byte(f.config), 0o644)
	}
	return nil
}
