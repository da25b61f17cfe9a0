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

var submountFlags sync.Map // virtiofsd path -> []string

// announceSubmountsArgs returns the arguments that turn announcement on
// for the virtiofsd at bin, or nil if it does not support it.
func announceSubmountsArgs(bin string) []string {
	if v, ok := submountFlags.Load(bin); ok {
		return v.([]string)
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
	args := submountArgsFromHelp(out.String())
	submountFlags.Store(bin, args)
	return args
}

func submountArgsFromHelp(help string) []string {
	switch {
	case strings.Contains(help, "--announce-submounts"):
		return []string{"--announce-submounts"}
	case strings.Contains(help, "announce_submounts"):
		return []string{"-o", "announce_submounts"}
	}
	return nil
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
