package sandbox

import (
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// virtiofsd announces the mounts below the shared directory to the guest
// (FUSE_ATTR_SUBMOUNT): the guest kernel then gives each its own mount,
// with its own device number and flags, instead of folding them into one
// file system. That is what makes a non-recursive read-only mount behave
// as on runc: a read-only volume with a writable mount inside it stays
// writable there (runc remounts only the top read-only), and files on
// different host file systems do not share one inode space in the guest.
// QEMU 7.2's C virtiofsd takes "-o announce_submounts", the Rust one
// "--announce-submounts"; the binary's --help says which.
//
// Extended attributes are on too (off by default in both virtiofsds), as
// a container's file system has them under runc: file capabilities
// (security.capability: an image's non-root nginx that binds port 80 with
// cap_net_bind_service, iputils' ping with cap_net_raw) are read from
// them at exec, and without them the binary runs with none; user.* and
// ACLs are kept. What the guest can set is what root in a runc container
// can: virtiofsd lacks CAP_SYS_ADMIN, so trusted.* (overlayfs's own) stays
// out of reach. The cost is a round trip to virtiofsd on every write(2),
// the guest kernel asking for security.capability before it writes
// (measured under TCG: 4 KiB writes ~75% slower, 64 KiB writes no
// different; docs/configuration.md), so hypervisor.virtiofs_xattr can
// turn it off.

var virtiofsdFlags sync.Map // virtiofsd path -> virtiofsdFeatures

// virtiofsdFeatureArgs returns the arguments that turn on submount
// announcement and, with xattr (hypervisor.virtiofs_xattr), extended
// attributes for the virtiofsd at bin, each that it supports.
func virtiofsdFeatureArgs(bin string, xattr bool) []string {
	if v, ok := virtiofsdFlags.Load(bin); ok {
		return v.(virtiofsdFeatures).args(xattr)
	}
	cmd := exec.Command(bin, "--help")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan struct{})
	go func() { cmd.Run(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
		<-done
	}
	f := featuresFromHelp(out.String())
	virtiofsdFlags.Store(bin, f)
	return f.args(xattr)
}

// virtiofsdFeatures are one virtiofsd's spellings of the options Berth
// turns on, empty where it lacks them.
type virtiofsdFeatures struct{ submounts, xattr []string }

func (f virtiofsdFeatures) args(xattr bool) []string {
	if !xattr {
		return f.submounts
	}
	return append(slices.Clone(f.submounts), f.xattr...)
}

func featuresFromHelp(help string) virtiofsdFeatures {
	var f virtiofsdFeatures
	switch {
	case strings.Contains(help, "--announce-submounts"):
		f.submounts = []string{"--announce-submounts"}
	case strings.Contains(help, "announce_submounts"):
		f.submounts = []string{"-o", "announce_submounts"}
	}
	switch {
	case strings.Contains(help, "--xattr"):
		f.xattr = []string{"--xattr"}
	case strings.Contains(help, "-o xattr"):
		f.xattr = []string{"-o", "xattr"}
	}
	return f
}

// Announcing submounts is not enough for a read-only volume: the guest
// kernel mounts an announced submount when a path first crosses it, with
// the flags of the mount it was reached through (finish_automount), so
// one reached through the container's read-only bind is read-only too.
// runc makes only the top of an "rbind,ro" mount read-only (Kubernetes'
// readOnly volumes; "rro" is the recursive kind). So for each mount below
// the source of such a mount, the guest spec gets a bind of that submount
// on top, reached through the guest's writable share: it is then as
// writable as it is on the host, as under runc.

// readOnlySubmounts returns the paths, relative to m.Source, of the host
// mounts below m.Source when m is a recursive, non-recursively read-only
// bind mount; nil otherwise.
func readOnlySubmounts(m specs.Mount) []string {
	if !slices.Contains(m.Options, "rbind") || !slices.Contains(m.Options, "ro") || slices.Contains(m.Options, "rro") {
		return nil
	}
	src, err := filepath.EvalSymlinks(m.Source)
	if err != nil {
		return nil
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(src))
	if err != nil {
		return nil
	}
	var rel []string
	for _, mi := range mounts {
		if r, err := filepath.Rel(src, mi.Mountpoint); err == nil && r != "." && !strings.HasPrefix(r, "..") {
			rel = append(rel, r)
		}
	}
	// Parents before children, so that each bind lands on its parent.
	slices.SortFunc(rel, func(a, b string) int { return strings.Count(a, "/") - strings.Count(b, "/") })
	return slices.Compact(rel)
}

// withWritableSubmounts inserts, after each mount i in subs, a bind of each
// of its submounts from the guest share (rewritten mounts[i].Source).
func withWritableSubmounts(mounts []specs.Mount, subs map[int][]string) []specs.Mount {
	if len(subs) == 0 {
		return mounts
	}
	out := make([]specs.Mount, 0, len(mounts))
	for i, m := range mounts {
		out = append(out, m)
		for _, rel := range subs[i] {
			out = append(out, specs.Mount{
				Destination: path.Join(m.Destination, rel),
				Type:        "bind",
				Source:      path.Join(m.Source, rel),
				Options:     []string{"rbind"},
			})
		}
	}
	return out
}
