package guest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
)

// ModulesListPath is where the initramfs lists the modules the agent loads
// at boot, one path per line relative to /lib/modules/<kver>, dependencies
// first. The agent reads it with kmod.LoadList (internal/agent/kmod keeps
// the same constant; a test checks they agree).
const ModulesListPath = "/etc/berth/modules.load"

// AgentDir holds the agent binary (AgentDir/agent); /init is a symlink to
// it. The agent moves the system off the initramfs at boot (runc cannot
// pivot_root out of rootfs) and bind-mounts this directory into the new
// root instead of copying the 11 MB binary and re-executing it, so it
// must be a directory of its own (internal/agent keeps the same constant;
// a test checks they agree).
const AgentDir = "/berth"

// initramfsMTime is the modification time of every entry. A fixed time makes
// the image a function of its inputs alone, so identical inputs give a
// byte-identical initramfs.
var initramfsMTime = time.Unix(0, 0)

// initramfsSpec is what goes into the guest's initramfs.
type initramfsSpec struct {
	kernelVersion string
	agent         string   // host path of the static agent, installed as /init
	modDir        string   // host path of lib/modules/<kver>
	modules       []string // module paths relative to modDir, in load order
}

// writeInitramfs writes an uncompressed newc cpio archive to w.
//
// Uncompressed, because the guest decompresses under emulation: with TCG
// the Berth kernel took ~0.5 s of guest time to gunzip the 4.4 MB image
// (11 MB, almost all of it the agent), and the agent answered 0.4-0.5 s
// sooner from the plain archive in the same run; LZ4 (the kernel has
// RD_LZ4) was no faster than plain cpio and would need a compressor here
// (docs/benchmarks.md). The cost is 11 MB instead of 4.4 MB on disk and
// loaded into guest RAM by QEMU, which the kernel frees once unpacked.
func writeInitramfs(w io.Writer, s initramfsSpec) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := cpio.NewWriter(bw)
	iw := &initramfsWriter{w: cw, raw: bw}

	kmodDir := s.kmodDir()
	agentDir := strings.TrimPrefix(AgentDir, "/")
	for _, d := range s.dirs() {
		mode := cpio.FileMode(0o755)
		if d == "tmp" {
			mode = cpio.ModeSticky | 0o777
		}
		if err := iw.header(&cpio.Header{Name: d, Mode: cpio.TypeDir | mode, Links: 2}); err != nil {
			return err
		}
	}

	// The kernel opens /dev/console for init's stdio before init runs, so
	// before anything can mount devtmpfs. Without this node init starts
	// with no stdin/stdout/stderr and the kernel logs "unable to open an
	// initial console".
	if err := iw.charDevice("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := iw.file(agentDir+"/agent", 0o755, s.agent); err != nil {
		return fmt.Errorf("add agent %s as %s/agent: %w", s.agent, AgentDir, err)
	}
	if err := iw.symlink("init", AgentDir+"/agent"); err != nil {
		return err
	}
	for _, m := range s.modules {
		if err := iw.file(path.Join(kmodDir, m), 0o644, filepath.Join(s.modDir, filepath.FromSlash(m))); err != nil {
			return fmt.Errorf("add module %s: %w", m, err)
		}
	}
	if err := iw.bytes(strings.TrimPrefix(ModulesListPath, "/"), 0o644, s.moduleList()); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// kmodDir is the image's module directory, relative to its root.
func (s initramfsSpec) kmodDir() string { return "lib/modules/" + s.kernelVersion }

// dirs are the image's directories, relative to its root, each after its
// parent. The root image (rootimage.go) has the same tree.
func (s initramfsSpec) dirs() []string {
	set := map[string]bool{}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc/berth", strings.TrimPrefix(AgentDir, "/"), s.kmodDir()} {
		addParents(set, d)
	}
	for _, m := range s.modules {
		addParents(set, path.Dir(path.Join(s.kmodDir(), m)))
	}
	sorted := make([]string, 0, len(set))
	for d := range set {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted) // a parent sorts before its children
	return sorted
}

// moduleList is the content of ModulesListPath.
func (s initramfsSpec) moduleList() []byte {
	var list strings.Builder
	for _, m := range s.modules {
		list.WriteString(m + "\n")
	}
	return []byte(list.String())
}

func addParents(set map[string]bool, dir string) {
	for d := dir; d != "." && d != "/" && d != ""; d = path.Dir(d) {
		set[d] = true
	}
}

// initramfsWriter adds entries to a newc archive with fixed ownership and
// times and explicit inode numbers.
type initramfsWriter struct {
	w     *cpio.Writer
	raw   io.Writer // the stream under w, for headers cpio.Writer cannot encode
	inode int64
}

func (iw *initramfsWriter) header(h *cpio.Header) error {
	iw.inode++
	h.Inode = iw.inode
	h.ModTime = initramfsMTime
	return iw.w.WriteHeader(h)
}

func (iw *initramfsWriter) file(name string, perm cpio.FileMode, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	if err := iw.header(&cpio.Header{Name: name, Mode: cpio.TypeReg | perm, Size: fi.Size(), Links: 1}); err != nil {
		return err
	}
	n, err := io.Copy(iw.w, f)
	if err == nil && n != fi.Size() {
		err = fmt.Errorf("%s changed size while being read", src)
	}
	return err
}

func (iw *initramfsWriter) symlink(name, target string) error {
	if err := iw.header(&cpio.Header{Name: name, Mode: cpio.TypeSymlink | 0o777, Size: int64(len(target)), Links: 1}); err != nil {
		return err
	}
	_, err := iw.w.Write([]byte(target))
	return err
}

func (iw *initramfsWriter) bytes(name string, perm cpio.FileMode, data []byte) error {
	if err := iw.header(&cpio.Header{Name: name, Mode: cpio.TypeReg | perm, Size: int64(len(data)), Links: 1}); err != nil {
		return err
	}
	_, err := iw.w.Write(data)
	return err
}

// charDevice writes a character device entry. cpio.Header has no field for
// the device number (rdevmajor/rdevminor) and the writer leaves it zero, so
// this one header is encoded here, after Flush has padded the previous entry
// to the 4-byte boundary the format requires. A device node has no data, so
// the stream stays aligned for the writer's next entry.
func (iw *initramfsWriter) charDevice(name string, perm cpio.FileMode, major, minor uint32) error {
	if err := iw.w.Flush(); err != nil {
		return err
	}
	iw.inode++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		iw.inode,                   // c_ino
		uint32(cpio.TypeChar|perm), // c_mode
		0, 0,                       // c_uid, c_gid
		1,                             // c_nlink
		uint32(initramfsMTime.Unix()), // c_mtime
		0,                             // c_filesize
		0, 0,                          // c_devmajor, c_devminor
		major, minor, // c_rdevmajor, c_rdevminor
		len(name)+1, // c_namesize, with the NUL
		0)           // c_check
	entry := append([]byte(hdr+name), 0)
	for len(entry)%4 != 0 {
		entry = append(entry, 0)
	}
	_, err := iw.raw.Write(entry)
	return err
}
