package guest

import (
	"compress/gzip"
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

// initramfsMTime is the modification time of every entry. A fixed time (and
// a gzip header without name or time) makes the image a function of its
// inputs alone, so identical inputs give a byte-identical initramfs.
var initramfsMTime = time.Unix(0, 0)

// initramfsSpec is what goes into the guest's initramfs.
type initramfsSpec struct {
	kernelVersion string
	agent         string   // host path of the static agent, installed as /init
	modDir        string   // host path of lib/modules/<kver>
	modules       []string // module paths relative to modDir, in load order
}

// writeInitramfs writes a gzip-compressed newc cpio archive to w.
func writeInitramfs(w io.Writer, s initramfsSpec) error {
	// The default level: -9 saves under 1% on a Go binary and takes about
	// five times longer, which every agent rebuild would pay.
	zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	if err != nil {
		return err
	}
	cw := cpio.NewWriter(zw)
	iw := &initramfsWriter{w: cw, raw: zw}

	kmodDir := "lib/modules/" + s.kernelVersion
	dirs := map[string]bool{}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc/berth", kmodDir} {
		addParents(dirs, d)
	}
	for _, m := range s.modules {
		addParents(dirs, path.Dir(path.Join(kmodDir, m)))
	}
	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted) // a parent sorts before its children
	for _, d := range sorted {
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
	if err := iw.file("init", 0o755, s.agent); err != nil {
		return fmt.Errorf("add agent %s as /init: %w", s.agent, err)
	}
	for _, m := range s.modules {
		if err := iw.file(path.Join(kmodDir, m), 0o644, filepath.Join(s.modDir, filepath.FromSlash(m))); err != nil {
			return fmt.Errorf("add module %s: %w", m, err)
		}
	}
	var list strings.Builder
	for _, m := range s.modules {
		list.WriteString(m + "\n")
	}
	if err := iw.bytes(strings.TrimPrefix(ModulesListPath, "/"), 0o644, []byte(list.String())); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return zw.Close()
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
