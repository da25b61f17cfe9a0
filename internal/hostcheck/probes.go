package hostcheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
)

// accelProbeTimeout bounds the throw-away QEMU qemu.CachedAccel may boot.
const accelProbeTimeout = 5 * time.Second

const vhostVsockDev = "/dev/vhost-vsock"

// qemuVersionRE matches the first line of `qemu-system-x86_64 -version`,
// e.g. "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".
var qemuVersionRE = regexp.MustCompile(`QEMU emulator version (\d+\.\d+(?:\.\d+)?)`)

// ParseQEMUVersion extracts "7.2.22" from QEMU's -version output.
func ParseQEMUVersion(out string) (string, error) {
	m := qemuVersionRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no \"QEMU emulator version\" in %q", firstLine(out))
	}
	return m[1], nil
}

// checkQEMU: the QEMU binary exists, runs, and says which version it is.
func checkQEMU(ctx context.Context, e env, path string) Finding {
	f := Finding{Check: CheckQEMU}
	fixInstall := "apt-get install qemu-system-x86 (or set hypervisor.path to your qemu-system-x86_64)"
	fi, err := e.stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail(f, fmt.Sprintf("%s missing", path), fixInstall)
	case err != nil:
		return fail(f, fmt.Sprintf("%s: %v", path, err), fixInstall)
	case !fi.Mode().IsRegular():
		return fail(f, fmt.Sprintf("%s is not a regular file", path), fixInstall)
	}
	if err := e.access(path, unix.X_OK); err != nil {
		return fail(f, fmt.Sprintf("%s is not executable: %v", path, err),
			"chmod +x it or reinstall qemu-system-x86")
	}
	out, err := e.output(ctx, path, "-version")
	if err != nil {
		return fail(f, fmt.Sprintf("%s -version failed: %v: %s", path, err, firstLine(string(out))),
			"reinstall qemu-system-x86, or set hypervisor.path to a working qemu-system-x86_64")
	}
	v, err := ParseQEMUVersion(string(out))
	if err != nil {
		f.Status = Warn
		f.Detail = fmt.Sprintf("%s: unrecognised -version output: %v", path, err)
		f.Fix = "check that hypervisor.path is qemu-system-x86_64"
		return f
	}
	f.Detail = fmt.Sprintf("QEMU %s at %s", v, path)
	return f
}

// checkAccel: which accelerator sandboxes will get, and whether that is
// what hypervisor.accel asks for. It returns the accelerator ("kvm",
// "tcg", or "" if unknown) alongside the finding.
func checkAccel(ctx context.Context, e env, cfg *config.Config, qemuOK bool) (Finding, string) {
	f := Finding{Check: CheckAccel}
	if cfg.Hypervisor.Accel == config.AccelTCG {
		f.Detail = `TCG (software emulation): hypervisor.accel = "tcg"`
		return f, string(qemu.TCG)
	}
	if !qemuOK {
		f.Status = Warn
		f.Detail = "not probed: QEMU does not run (see the qemu check)"
		f.Fix = "fix the qemu check first"
		return f, ""
	}
	probe := qemu.AccelProbe{Binary: cfg.Hypervisor.Path, Timeout: accelProbeTimeout}
	if k := cfg.ResolvedKernel(); k != "" {
		if fi, err := e.stat(k); err == nil && fi.Mode().IsRegular() {
			probe.Kernel = k
		}
	}
	// Share the shim's cached verdict when run_dir exists. Otherwise probe
	// without the cache: writing it would create run_dir, and berth check
	// does not change the host.
	var (
		accel qemu.Accel
		why   string
		err   error
	)
	if fi, serr := e.stat(cfg.RunDir); serr == nil && fi.IsDir() {
		accel, why, err = e.cachedAccel(ctx, probe, filepath.Join(cfg.RunDir, "accel.json"))
	} else {
		accel, why, err = e.detectAccel(ctx, probe)
	}
	if err != nil {
		return fail(f, fmt.Sprintf("could not determine the accelerator: %v", err),
			`check that hypervisor.path runs, or set hypervisor.accel = "tcg"`), ""
	}
	switch accel {
	case qemu.KVM:
		f.Detail = withReason("KVM (hardware virtualisation)", why)
	case qemu.TCG:
		if cfg.Hypervisor.Accel == config.AccelKVM {
			return fail(f, withReason(`hypervisor.accel = "kvm" but KVM is not usable`, why),
				`set hypervisor.accel = "auto" or "tcg", or make KVM usable (enable virtualisation in the firmware, load kvm_intel or kvm_amd, give access to /dev/kvm)`), ""
		}
		f.Detail = withReason("TCG (software emulation)", why)
	default:
		return fail(f, fmt.Sprintf("the accelerator probe answered %q", accel),
			`set hypervisor.accel = "tcg"`), ""
	}
	return f, string(accel)
}

// withReason appends ": why" when there is a reason to give. qemu's
// reasons end in "; using TCG", which the finding already says first.
func withReason(what, why string) string {
	why = strings.TrimSuffix(strings.TrimSpace(why), "; using TCG")
	if why == "" {
		return what
	}
	return what + ": " + why
}

// checkChannel: how the host will reach the agent. vsock needs the
// vhost_vsock module (/dev/vhost-vsock); without it Berth falls back to
// virtio-serial, which always works, unless agent.transport demands vsock.
func checkChannel(e env, transport string) Finding {
	f := Finding{Check: CheckChannel}
	if transport == config.TransportVirtioSerial {
		f.Detail = `virtio-serial (agent.transport = "virtio-serial")`
		return f
	}
	why := ""
	if _, err := e.stat(vhostVsockDev); err != nil {
		why = vhostVsockDev + " missing"
	} else if err := e.access(vhostVsockDev, unix.R_OK|unix.W_OK); err != nil {
		why = fmt.Sprintf("%s not accessible: %v", vhostVsockDev, err)
	}
	switch {
	case why == "":
		f.Detail = "vsock (" + vhostVsockDev + ")"
	case transport == config.TransportVsock:
		return fail(f, fmt.Sprintf(`agent.transport = "vsock" but %s`, why),
			`load the module (modprobe vhost_vsock), or set agent.transport = "auto" or "virtio-serial"`)
	default:
		f.Detail = fmt.Sprintf("virtio-serial (%s; modprobe vhost_vsock to use vsock)", why)
	}
	return f
}

// checkVirtiofsd: the virtiofsd binary that shares container root file
// systems with the guest is present and executable.
func checkVirtiofsd(e env, path string) Finding {
	f := Finding{Check: CheckVirtiofsd}
	fix := "apt-get install qemu-system-common (Debian 12) or virtiofsd (Debian 13 and later), or set hypervisor.virtiofsd_path"
	fi, err := e.stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail(f, path+" missing", fix)
	case err != nil:
		return fail(f, fmt.Sprintf("%s: %v", path, err), fix)
	case !fi.Mode().IsRegular():
		return fail(f, path+" is not a regular file", fix)
	}
	if err := e.access(path, unix.X_OK); err != nil {
		return fail(f, fmt.Sprintf("%s is not executable: %v", path, err), fix)
	}
	f.Detail = path
	return f
}

// checkGuestFile: a guest artefact (kernel or initramfs) exists, is a
// non-empty regular file, and can be read.
func checkGuestFile(e env, what, key, path string) Finding {
	f := Finding{Check: CheckGuestImage}
	fix := fmt.Sprintf("run `berth guest build` (or set %s to an existing file)", key)
	fi, err := e.stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail(f, path+" missing", fix)
	case err != nil:
		return fail(f, fmt.Sprintf("%s: %v", path, err), fix)
	case !fi.Mode().IsRegular():
		return fail(f, path+" is not a regular file", fix)
	case fi.Size() == 0:
		return fail(f, path+" is empty", fix)
	}
	if err := e.access(path, unix.R_OK); err != nil {
		return fail(f, fmt.Sprintf("%s is not readable: %v", path, err), "run berth as root, or fix the file's permissions")
	}
	f.Detail = fmt.Sprintf("%s %s (%s)", what, path, humanSize(fi.Size()))
	return f
}

// checkGuestRoot checks the file the guest's root comes from (guest.root):
// the initramfs or the root image.
func checkGuestRoot(e env, cfg *config.Config) Finding {
	_, err := e.stat(cfg.ResolvedRootImage())
	if !cfg.BootsRootImage(err == nil) {
		return checkGuestFile(e, "initramfs", "guest.initrd", cfg.ResolvedInitrd())
	}
	f := checkGuestFile(e, "root image (virtio-pmem)", "guest.root_image", cfg.ResolvedRootImage())
	if f.Status == Fail && cfg.Guest.Root == config.GuestRootPmem {
		f.Fix += `, or set guest.root = "initramfs"`
	}
	return f
}

// checkCgroups reports the host cgroup layout and whether systemd is PID 1
// (which decides between the systemd and cgroupfs ways of making the
// sandbox cgroup), and where sandbox cgroups go. Berth works on every
// layout, and the configuration loader has already refused a manager the
// host cannot serve, so this is informational: at worst a warning when
// the layout cannot be read, or when sandboxes get no cgroup at all.
func checkCgroups(e env, cg config.Cgroup) Finding {
	f := Finding{Check: CheckCgroups}
	info, err := readCgroupInfo(e)
	if err != nil {
		f.Status = Warn
		f.Detail = "cannot tell the cgroup layout: " + err.Error()
		f.Fix = "mount cgroup2 at /sys/fs/cgroup (or the v1 hierarchies)"
		return f
	}
	f.Detail = info.String()
	if info.Layout == CgroupNone {
		f.Status = Warn
		f.Fix = "mount cgroup2 at /sys/fs/cgroup (or the v1 hierarchies); sandboxes cannot be placed in a host cgroup without one"
		return f
	}
	if init, err := readInit(e); err == nil {
		if IsSystemd(init) {
			f.Detail += "; systemd is PID 1"
		} else {
			f.Detail += fmt.Sprintf("; PID 1 is %s, not systemd (cgroupfs)", init)
		}
	} else {
		f.Detail += "; PID 1 unknown: " + err.Error()
	}
	if cg.Manager == config.CgroupManagerNone {
		f.Status = Warn
		f.Detail += `; cgroup.manager = "none": sandboxes run without a host cgroup or limits`
		f.Fix = `set cgroup.manager = "cgroupfs" (or "systemd" where systemd manages cgroup v2)`
		return f
	}
	f.Detail += fmt.Sprintf("; sandboxes in %s below %s", cg.Manager, cg.Parent)
	return f
}

func readCgroupInfo(e env) (CgroupInfo, error) {
	var lastErr error
	for _, p := range []string{"/proc/self/mountinfo", "/proc/mounts"} {
		r, err := e.open(p)
		if err != nil {
			lastErr = err
			continue
		}
		info, err := ParseCgroupMounts(r)
		r.Close()
		if err != nil {
			lastErr = fmt.Errorf("%s: %w", p, err)
			continue
		}
		return info, nil
	}
	return CgroupInfo{}, lastErr
}

func readInit(e env) (string, error) {
	r, err := e.open("/proc/1/comm")
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, 256))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// IsSystemd reports whether the contents of /proc/1/comm name systemd.
func IsSystemd(comm string) bool { return strings.TrimSpace(comm) == "systemd" }

// checkRunDir: run_dir exists and is writable, or can be created because
// its nearest existing ancestor is a writable directory. It never creates
// anything.
func checkRunDir(e env, dir string) Finding {
	f := Finding{Check: CheckRunDir}
	fix := "run berth as root, or set run_dir to a directory you can write (ideally on a tmpfs such as /run)"
	fi, err := e.stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return fail(f, dir+" exists and is not a directory", "remove it, or set run_dir elsewhere")
	case err == nil:
		if err := e.access(dir, unix.W_OK|unix.X_OK); err != nil {
			return fail(f, fmt.Sprintf("%s is not writable: %v", dir, err), fix)
		}
		f.Detail = dir + " is writable"
		return f
	case !errors.Is(err, fs.ErrNotExist):
		return fail(f, fmt.Sprintf("%s: %v", dir, err), fix)
	}
	parent := dir
	for {
		next := filepath.Dir(parent)
		if next == parent {
			return fail(f, fmt.Sprintf("no existing ancestor of %s", dir), fix)
		}
		parent = next
		pfi, err := e.stat(parent)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fail(f, fmt.Sprintf("%s: %v", parent, err), fix)
		}
		if !pfi.IsDir() {
			return fail(f, fmt.Sprintf("%s cannot be created: %s is not a directory", dir, parent), "set run_dir elsewhere")
		}
		if err := e.access(parent, unix.W_OK|unix.X_OK); err != nil {
			return fail(f, fmt.Sprintf("%s cannot be created: %s is not writable: %v", dir, parent, err), fix)
		}
		f.Detail = fmt.Sprintf("%s will be created (%s is writable)", dir, parent)
		return f
	}
}

func fail(f Finding, detail, fix string) Finding {
	f.Status, f.Detail, f.Fix = Fail, detail, fix
	return f
}

func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return strings.TrimSpace(sc.Text())
	}
	return ""
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
