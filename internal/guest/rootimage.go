package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// RootImageName is the root image's file name in the output directory.
const RootImageName = "root.erofs"

// rootImageAlign is what the root image is padded to: QEMU maps the whole
// file as a virtio-pmem device, whose size the guest hot-adds in 2 MiB
// sub-sections (internal/qemu's RootImageAlignMiB, which checks it).
const rootImageAlign = 2 << 20

// rootImageUUID is the erofs UUID of every root image: with fixed times
// and owners, identical inputs give a byte-identical image.
const rootImageUUID = "62657274-6800-4000-8000-726f6f74696d"

// RootImageOptions are the kernel options a guest needs to boot from the
// root image: virtio-pmem and its nvdimm bus, DAX (ZONE_DEVICE pages for
// the device), erofs, and devtmpfs mounted by the kernel itself (the image
// has no /dev/console node for the kernel to open before init runs). The
// root is mounted by the kernel before init, so they must all be built in.
var RootImageOptions = []string{"CONFIG_LIBNVDIMM", "CONFIG_BLK_DEV_PMEM", "CONFIG_VIRTIO_PMEM", "CONFIG_ZONE_DEVICE",
	"CONFIG_FS_DAX", "CONFIG_EROFS_FS", "CONFIG_DEVTMPFS_MOUNT"}

// rootImageSupported reports whether a kernel configuration has every
// RootImageOptions built in.
func rootImageSupported(cfg map[string]string) bool {
	for _, o := range RootImageOptions {
		if cfg[o] != "y" {
			return false
		}
	}
	return true
}

// mkfsErofs is erofs-utils' image builder (a variable for tests).
var mkfsErofs = "mkfs.erofs"

// rootImageFor is where a build with the kernel configuration at config
// writes its root image: want, or "" when the kernel cannot boot from one
// or mkfs.erofs is missing (the guest then boots from the initramfs).
func rootImageFor(config, want string) (string, string) {
	cfg, err := ReadKernelConfig(config)
	if err != nil || !rootImageSupported(cfg) {
		return "", ""
	}
	if _, err := exec.LookPath(mkfsErofs); err != nil {
		return "", fmt.Sprintf("no root image: %s not found (install erofs-utils: make deps); guests boot from the initramfs", mkfsErofs)
	}
	return want, ""
}

// writeRootImage writes the guest's root file system, the tree the
// initramfs holds, as an uncompressed erofs image at dst (atomically, as
// every file of the image), padded to rootImageAlign.
//
// Uncompressed and without inline tails (-E noinline_data): erofs mounts
// only plain, block-aligned files with DAX, and DAX is the point, so that
// the guest maps the agent's pages from the device instead of copying
// them. The tree is staged in a temporary directory under tmpDir, which
// is removed.
func writeRootImage(ctx context.Context, dst, tmpDir string, s initramfsSpec) (int64, error) {
	stage, err := os.MkdirTemp(tmpDir, ".rootimage-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(stage)
	tree := filepath.Join(stage, "tree")
	if err := stageRootTree(tree, s); err != nil {
		return 0, fmt.Errorf("stage the root image's tree: %w", err)
	}
	img := filepath.Join(stage, "image")
	// rootImageFor found mkfs.erofs before the build chose to write one.
	cmd := exec.CommandContext(ctx, mkfsErofs, "--quiet", "-x-1", "-T0", "--all-root", "-U", rootImageUUID, "-Enoinline_data", img, tree)
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	var size int64
	err = writeFileAtomic(dst, 0o644, func(w io.Writer) error {
		f, err := os.Open(img)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(w, f)
		if err != nil {
			return err
		}
		pad := (rootImageAlign - n%rootImageAlign) % rootImageAlign
		if _, err := w.Write(make([]byte, pad)); err != nil {
			return err
		}
		size = n + pad
		return nil
	})
	return size, err
}

// stageRootTree lays out s's tree at dir: the directories, the agent
// (AgentDir/agent) with /init linking to it, the module list and modules.
func stageRootTree(dir string, s initramfsSpec) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	for _, d := range s.dirs() {
		mode := os.FileMode(0o755)
		if d == "tmp" {
			mode = os.ModeSticky | 0o777
		}
		p := filepath.Join(dir, filepath.FromSlash(d))
		if err := os.Mkdir(p, 0); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			return err
		}
	}
	agent := path.Join(strings.TrimPrefix(AgentDir, "/"), "agent")
	if err := copyRegular(s.agent, filepath.Join(dir, agent), 0o755); err != nil {
		return fmt.Errorf("add agent %s as /%s: %w", s.agent, agent, err)
	}
	if err := os.Symlink(AgentDir+"/agent", filepath.Join(dir, "init")); err != nil {
		return err
	}
	for _, m := range s.modules {
		if err := copyRegular(filepath.Join(s.modDir, filepath.FromSlash(m)), filepath.Join(dir, s.kmodDir(), filepath.FromSlash(m)), 0o644); err != nil {
			return fmt.Errorf("add module %s: %w", m, err)
		}
	}
	return os.WriteFile(filepath.Join(dir, strings.TrimPrefix(ModulesListPath, "/")), s.moduleList(), 0o644)
}

func copyRegular(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil {
		return err
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(perm); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// removeStaleRootImage removes a root image an earlier build left at path
// when this build writes none: "auto" boots whatever root image is there,
// and an old one would hold an old agent for a kernel that may not mount
// it.
func removeStaleRootImage(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the previous build's root image: %w", err)
	}
	return nil
}
