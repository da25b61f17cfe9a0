package hostcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/qemu"
)

func TestParseQEMUVersion(t *testing.T) {
	for in, want := range map[string]string{
		"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n": "7.2.22",
		"QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)\n":                                                "8.2.2",
		"QEMU emulator version 9.0.0\n": "9.0.0",
		"QEMU emulator version 6.2\n":   "6.2",
	} {
		got, err := ParseQEMUVersion(in)
		if err != nil || got != want {
			t.Errorf("ParseQEMUVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "qemu-system-x86_64: -version: invalid option\n", "QEMU emulator version x\n"} {
		if v, err := ParseQEMUVersion(in); err == nil {
			t.Errorf("ParseQEMUVersion(%q) = %q, want an error", in, v)
		}
	}
}

// fakeHost is a host made of a file table, a command table and an
// accelerator answer.
type fakeHost struct {
	files    map[string]fakeFile // path -> file; directories have dir=true
	denied   map[string]bool     // paths access(2) refuses
	outputs  map[string]string   // binary -> -version output
	accel    qemu.Accel
	accelWhy string
	accelErr error
	probed   *qemu.AccelProbe // what the accelerator probe was asked
	cache    string           // cacheFile given to cachedAccel; "" if uncached
}

type fakeFile struct {
	dir     bool
	size    int64
	content string
	perm    fs.FileMode // 0: 0755
}

type fakeInfo struct {
	name string
	f    fakeFile
}

func (i fakeInfo) Name() string { return i.name }
func (i fakeInfo) Size() int64  { return i.f.size }
func (i fakeInfo) Mode() fs.FileMode {
	perm := i.f.perm
	if perm == 0 {
		perm = 0o755
	}
	if i.f.dir {
		return fs.ModeDir | perm
	}
	return perm
}
func (i fakeInfo) ModTime() time.Time { return time.Time{} }
func (i fakeInfo) IsDir() bool        { return i.f.dir }
func (i fakeInfo) Sys() any           { return nil }

func (h *fakeHost) env() env {
	return env{
		output: func(_ context.Context, name string, args ...string) ([]byte, error) {
			out, ok := h.outputs[name]
			if !ok {
				return nil, fmt.Errorf("exec: %q: not found", name)
			}
			return []byte(out), nil
		},
		stat: func(p string) (fs.FileInfo, error) {
			f, ok := h.files[p]
			if !ok {
				return nil, &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
			}
			return fakeInfo{p, f}, nil
		},
		open: func(p string) (io.ReadCloser, error) {
			f, ok := h.files[p]
			if !ok {
				return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
			}
			return io.NopCloser(strings.NewReader(f.content)), nil
		},
		access: func(p string, mode uint32) error {
			if h.denied[p] {
				return unix.EACCES
			}
			if _, ok := h.files[p]; !ok {
				return unix.ENOENT
			}
			return nil
		},
		cachedAccel: func(_ context.Context, p qemu.AccelProbe, cacheFile string) (qemu.Accel, string, error) {
			h.probed = &p
			h.cache = cacheFile
			return h.accel, h.accelWhy, h.accelErr
		},
		detectAccel: func(_ context.Context, p qemu.AccelProbe) (qemu.Accel, string, error) {
			h.probed = &p
			return h.accel, h.accelWhy, h.accelErr
		},
		guestKernel: func(*config.Config) (GuestKernel, error) {
			return GuestKernel{Release: "6.1.0-56-cloud-amd64", Arch: "x86_64", Modules: []string{"virtio_mem", "kernel/drivers/block/virtio_blk.ko"},
				Config: fullKernelConfig(), Source: "debian", Package: "linux-image-6.1.0-56-cloud-amd64 6.1.192-1"}, nil
		},
	}
}

// goodHost can run Berth with the default configuration.
func goodHost() *fakeHost {
	return &fakeHost{
		files: map[string]fakeFile{
			"/usr/bin/qemu-system-x86_64":        {size: 1 << 20},
			"/usr/lib/qemu/virtiofsd":            {size: 1 << 20},
			"/usr/share/qemu/qboot.rom":          {size: 64 << 10},
			"/var/lib/berth/guest/vmlinuz":       {size: 8 << 20},
			"/var/lib/berth/guest/initramfs.img": {size: 12 << 20},
			"/dev/vhost-vsock":                   {},
			"/dev/net/tun":                       {},
			"/run":                               {dir: true},
			"/proc/self/mountinfo":               {content: mountinfoV2},
			"/proc/1/comm":                       {content: "systemd\n"},
		},
		outputs: map[string]string{
			"/usr/bin/qemu-system-x86_64": "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n",
		},
		accel: "kvm",
	}
}

func loadedDefaults(t *testing.T) *config.Config {
	t.Helper()
	cfg := config.Default()
	// goodHost's guest image holds the Debian cloud kernel.
	cfg.Guest.KernelSource = config.KernelSourceDebian
	cfg.Guest.Kernel = cfg.ResolvedKernel()
	cfg.Guest.Initrd = cfg.ResolvedInitrd()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func find(t *testing.T, r Report, check string) []Finding {
	t.Helper()
	var out []Finding
	for _, f := range r.Findings {
		if f.Check == check {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no %q finding in %+v", check, r.Findings)
	}
	return out
}

func TestRunGoodHost(t *testing.T) {
	h := goodHost()
	cfg := loadedDefaults(t)
	r := run(context.Background(), cfg, h.env())
	if !r.OK() {
		t.Fatalf("report not OK: %+v", r.Findings)
	}
	for _, f := range r.Findings {
		if f.Status != OK {
			t.Errorf("%s: %v %s", f.Check, f.Status, f.Detail)
		}
	}
	if r.Accel != "kvm" {
		t.Errorf("Accel = %q", r.Accel)
	}
	if got := find(t, r, CheckQEMU)[0].Detail; got != "QEMU 7.2.22 at /usr/bin/qemu-system-x86_64" {
		t.Errorf("qemu detail = %q", got)
	}
	if got := find(t, r, CheckChannel)[0].Detail; !strings.HasPrefix(got, "vsock") {
		t.Errorf("channel detail = %q", got)
	}
	if got := find(t, r, CheckCgroups)[0].Detail; got != "v2 (unified, /sys/fs/cgroup); systemd is PID 1; sandboxes in cgroupfs below /berth" {
		t.Errorf("cgroups detail = %q", got)
	}
	if got := find(t, r, CheckRunDir)[0].Detail; got != "/run/berth will be created (/run is writable)" {
		t.Errorf("run_dir detail = %q", got)
	}
	if h.probed == nil || h.probed.Binary != cfg.Hypervisor.Path || h.probed.Kernel != cfg.Guest.Kernel || h.probed.Timeout != 5*time.Second {
		t.Errorf("accel probe = %+v", h.probed)
	}
	if h.cache != "" {
		t.Errorf("accel cache %q used although run_dir does not exist (writing it would create run_dir)", h.cache)
	}
	if len(find(t, r, CheckGuestImage)) != 2 {
		t.Errorf("want a guest image finding each for kernel and initramfs")
	}
}

func TestRunFailures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		breakf func(*fakeHost, *config.Config)
		check  string
		status Status
		detail string // substring
		fix    string // substring
	}{
		{"qemu missing", func(h *fakeHost, _ *config.Config) { delete(h.files, "/usr/bin/qemu-system-x86_64") },
			CheckQEMU, Fail, "/usr/bin/qemu-system-x86_64 missing", "apt-get install qemu-system-x86"},
		{"qemu broken", func(h *fakeHost, _ *config.Config) { delete(h.outputs, "/usr/bin/qemu-system-x86_64") },
			CheckQEMU, Fail, "-version failed", "reinstall"},
		{"qemu odd version", func(h *fakeHost, _ *config.Config) { h.outputs["/usr/bin/qemu-system-x86_64"] = "hello\n" },
			CheckQEMU, Warn, "unrecognised", "hypervisor.path"},
		{"accel not probed without qemu", func(h *fakeHost, _ *config.Config) { delete(h.files, "/usr/bin/qemu-system-x86_64") },
			CheckAccel, Warn, "not probed", "qemu"},
		{"tcg fallback", func(h *fakeHost, _ *config.Config) {
			h.accel, h.accelWhy = "tcg", "KVM failed: Could not access KVM kernel module"
		},
			CheckAccel, OK, "TCG (software emulation): KVM failed: Could not access KVM kernel module", ""},
		{"kvm demanded", func(h *fakeHost, c *config.Config) {
			c.Hypervisor.Accel = "kvm"
			h.accel, h.accelWhy = "tcg", "KVM failed: permission denied"
		}, CheckAccel, Fail, `hypervisor.accel = "kvm" but KVM is not usable: KVM failed: permission denied`, `set hypervisor.accel = "auto" or "tcg"`},
		{"tcg configured", func(h *fakeHost, c *config.Config) {
			c.Hypervisor.Accel = "tcg"
			h.accelErr = errors.New("must not be called")
		},
			CheckAccel, OK, `TCG (software emulation): hypervisor.accel = "tcg"`, ""},
		{"accel probe error", func(h *fakeHost, _ *config.Config) { h.accelErr = errors.New("boom") },
			CheckAccel, Fail, "could not determine the accelerator: boom", "hypervisor.accel"},
		{"no vsock, auto", func(h *fakeHost, _ *config.Config) { delete(h.files, "/dev/vhost-vsock") },
			CheckChannel, OK, "virtio-serial (/dev/vhost-vsock missing", ""},
		{"vsock not accessible, auto", func(h *fakeHost, _ *config.Config) { h.denied["/dev/vhost-vsock"] = true },
			CheckChannel, OK, "virtio-serial (/dev/vhost-vsock not accessible", ""},
		{"no vsock, vsock demanded", func(h *fakeHost, c *config.Config) {
			delete(h.files, "/dev/vhost-vsock")
			c.Agent.Transport = "vsock"
		}, CheckChannel, Fail, `agent.transport = "vsock" but /dev/vhost-vsock missing`, "modprobe vhost_vsock"},
		{"virtio-serial configured", func(h *fakeHost, c *config.Config) { c.Agent.Transport = "virtio-serial" },
			CheckChannel, OK, "virtio-serial (agent.transport", ""},
		{"virtiofsd missing", func(h *fakeHost, _ *config.Config) { delete(h.files, "/usr/lib/qemu/virtiofsd") },
			CheckVirtiofsd, Fail, "/usr/lib/qemu/virtiofsd missing", "hypervisor.virtiofsd_path"},
		{"virtiofsd not executable", func(h *fakeHost, _ *config.Config) { h.denied["/usr/lib/qemu/virtiofsd"] = true },
			CheckVirtiofsd, Fail, "not executable", "virtiofsd"},
		{"kernel missing", func(h *fakeHost, _ *config.Config) { delete(h.files, "/var/lib/berth/guest/vmlinuz") },
			CheckGuestImage, Fail, "/var/lib/berth/guest/vmlinuz missing", "run `berth guest build`"},
		{"initrd empty", func(h *fakeHost, _ *config.Config) { h.files["/var/lib/berth/guest/initramfs.img"] = fakeFile{} },
			CheckGuestImage, Fail, "initramfs.img is empty", "run `berth guest build`"},
		{"hybrid cgroups, no systemd", func(h *fakeHost, _ *config.Config) {
			h.files["/proc/self/mountinfo"] = fakeFile{content: mountinfoHybrid}
			h.files["/proc/1/comm"] = fakeFile{content: "tini\n"}
		}, CheckCgroups, OK, "hybrid (v1 cpu,cpuacct,memory,name=systemd,pids; v2 at /sys/fs/cgroup/unified); PID 1 is tini, not systemd", ""},
		{"v1 from /proc/mounts", func(h *fakeHost, _ *config.Config) {
			delete(h.files, "/proc/self/mountinfo")
			h.files["/proc/mounts"] = fakeFile{content: procMountsV1}
		}, CheckCgroups, OK, "v1 (cpu,cpuacct,memory); systemd is PID 1", ""},
		{"no cgroups", func(h *fakeHost, _ *config.Config) {
			h.files["/proc/self/mountinfo"] = fakeFile{content: mountinfoNone}
		},
			CheckCgroups, Warn, "no cgroup file system mounted", "mount cgroup2"},
		{"mount table unreadable", func(h *fakeHost, _ *config.Config) { delete(h.files, "/proc/self/mountinfo") },
			CheckCgroups, Warn, "cannot tell the cgroup layout", "mount cgroup2"},
		{"cgroup manager none", func(_ *fakeHost, c *config.Config) { c.Cgroup.Manager = config.CgroupManagerNone },
			CheckCgroups, Warn, "without a host cgroup", `cgroup.manager = "cgroupfs"`},
		{"run_dir exists", func(h *fakeHost, _ *config.Config) { h.files["/run/berth"] = fakeFile{dir: true} },
			CheckRunDir, OK, "/run/berth is writable", ""},
		{"run_dir not writable", func(h *fakeHost, _ *config.Config) {
			h.files["/run/berth"] = fakeFile{dir: true}
			h.denied["/run/berth"] = true
		}, CheckRunDir, Fail, "/run/berth is not writable", "run berth as root"},
		{"run_dir parent not writable", func(h *fakeHost, _ *config.Config) { h.denied["/run"] = true },
			CheckRunDir, Fail, "/run/berth cannot be created: /run is not writable", "run_dir"},
		{"run_dir deep, grandparent writable", func(h *fakeHost, c *config.Config) {
			c.RunDir = "/run/a/b/berth"
		}, CheckRunDir, OK, "/run/a/b/berth will be created (/run is writable)", ""},
		{"run_dir is a file", func(h *fakeHost, _ *config.Config) { h.files["/run/berth"] = fakeFile{size: 1} },
			CheckRunDir, Fail, "not a directory", "run_dir"},
		{"run_dir under a file", func(h *fakeHost, c *config.Config) {
			h.files["/run/file"] = fakeFile{size: 1}
			c.RunDir = "/run/file/berth"
		}, CheckRunDir, Fail, "/run/file is not a directory", "run_dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := goodHost()
			h.denied = map[string]bool{}
			cfg := loadedDefaults(t)
			tc.breakf(h, cfg)
			r := run(context.Background(), cfg, h.env())
			var got *Finding
			for i, f := range r.Findings {
				if f.Check == tc.check && (f.Status != OK || tc.status == OK) {
					got = &r.Findings[i]
					break
				}
			}
			if got == nil {
				t.Fatalf("no %s finding: %+v", tc.check, r.Findings)
			}
			if got.Status != tc.status {
				t.Errorf("status = %v, want %v (%s)", got.Status, tc.status, got.Detail)
			}
			if !strings.Contains(got.Detail, tc.detail) {
				t.Errorf("detail = %q, want it to contain %q", got.Detail, tc.detail)
			}
			if !strings.Contains(got.Fix, tc.fix) {
				t.Errorf("fix = %q, want it to contain %q", got.Fix, tc.fix)
			}
			if tc.status != OK && got.Fix == "" {
				t.Errorf("a %v finding without a fix", got.Status)
			}
			if r.OK() != (r.Problems() == 0) {
				t.Errorf("OK() and Problems() disagree")
			}
			if tc.status == Fail && r.OK() {
				t.Errorf("report OK despite a failure")
			}
		})
	}
}

func TestAccelCacheUsedWhenRunDirExists(t *testing.T) {
	h := goodHost()
	h.files["/run/berth"] = fakeFile{dir: true}
	r := run(context.Background(), loadedDefaults(t), h.env())
	if !r.OK() || h.cache != "/run/berth/accel.json" {
		t.Errorf("OK = %v, cache = %q", r.OK(), h.cache)
	}
}

func TestTCGAccelInReport(t *testing.T) {
	h := goodHost()
	h.accel = "tcg"
	r := run(context.Background(), loadedDefaults(t), h.env())
	if !r.OK() || r.Accel != "tcg" {
		t.Errorf("OK = %v, Accel = %q", r.OK(), r.Accel)
	}
}

func TestAccelProbeSkipsMissingKernel(t *testing.T) {
	h := goodHost()
	delete(h.files, "/var/lib/berth/guest/vmlinuz")
	run(context.Background(), loadedDefaults(t), h.env())
	if h.probed == nil || h.probed.Kernel != "" {
		t.Errorf("probe = %+v; want no kernel when the file is missing", h.probed)
	}
}

func TestReportJSON(t *testing.T) {
	r := Report{Accel: "tcg", Findings: []Finding{
		{Check: CheckQEMU, Status: OK, Detail: "QEMU 7.2.22"},
		{Check: CheckGuestImage, Status: Fail, Detail: "x missing", Fix: "run `berth guest build`"},
	}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"ok":false,"findings":[{"check":"qemu","status":"ok","detail":"QEMU 7.2.22"},{"check":"guest image","status":"fail","detail":"x missing","fix":"run ` + "`berth guest build`" + `"}],"accel":"tcg"}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	var back struct {
		Findings []Finding `json:"findings"`
	}
	if err := json.Unmarshal(b, &back); err != nil || back.Findings[1].Status != Fail {
		t.Errorf("unmarshal: %v, %+v", err, back)
	}
}

func TestStatusString(t *testing.T) {
	if OK.String() != "ok" || Warn.String() != "warn" || Fail.String() != "FAIL" {
		t.Errorf("labels: %s %s %s", OK, Warn, Fail)
	}
}

// TestRunOnThisHost runs the real probes read-only against the machine the
// tests run on; it asserts only that nothing panics and every finding is
// complete, since hosts differ. The accelerator is fixed to TCG so the
// test never boots QEMU.
func TestRunOnThisHost(t *testing.T) {
	cfg := loadedDefaults(t)
	cfg.Hypervisor.Accel = "tcg"
	cfg.RunDir = t.TempDir() + "/run"
	r := Run(context.Background(), cfg)
	for _, f := range r.Findings {
		if f.Check == "" || f.Detail == "" || (f.Status != OK && f.Fix == "") {
			t.Errorf("incomplete finding %+v", f)
		}
		t.Logf("%-5s %-12s %s", f.Status, f.Check, f.Detail)
	}
	if _, err := os.Stat(cfg.RunDir); err == nil {
		t.Errorf("the check created %s", cfg.RunDir)
	}
}
