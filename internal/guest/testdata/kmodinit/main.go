// Command kmodinit is a stand-in for berth-agent used by the boot test in
// internal/guest: as /init it mounts the early file systems, loads the
// initramfs's modules with kmod.LoadList, reports what the virtio bus and
// the virtio-serial ports look like, and powers the VM off. Its output
// lines start with "kmodinit:" so the test can pick them out of the
// console log.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/agent/kmod"
)

func main() {
	if err := run(); err != nil {
		fmt.Println("kmodinit: FAIL:", err)
	}
	unix.Sync()
	// PID 1 must not exit (that panics the kernel): power off instead.
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func run() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	dir, err := kmod.ModulesDir()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := kmod.LoadList(kmod.ListPath, dir, string(cmdline)); err != nil {
		return err
	}
	list, _ := os.ReadFile(kmod.ListPath)
	var loaded, missing []string
	for _, l := range strings.Fields(string(list)) {
		name := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(l), ".ko"), "-", "_")
		if _, err := os.Stat("/sys/module/" + name); err == nil {
			loaded = append(loaded, name)
		} else {
			missing = append(missing, name)
		}
	}
	fmt.Printf("kmodinit: LoadList took %s; %d modules in /sys/module: %s\n", time.Since(start).Round(time.Millisecond), len(loaded), strings.Join(loaded, " "))
	if len(missing) > 0 {
		return fmt.Errorf("not in /sys/module after loading: %s", strings.Join(missing, " "))
	}
	// Show what the modules made of "mod.param=value" words on the command
	// line, which only reach them through kmod.LoadList.
	for _, w := range strings.Fields(string(cmdline)) {
		mp, _, ok := strings.Cut(w, "=")
		mod, param, dotted := strings.Cut(mp, ".")
		if !ok || !dotted {
			continue
		}
		v, err := os.ReadFile(filepath.Join("/sys/module", strings.ReplaceAll(mod, "-", "_"), "parameters", param))
		if err == nil {
			fmt.Printf("kmodinit: param %s.%s=%s\n", mod, param, strings.TrimSpace(string(v)))
		}
	}
	fmt.Println("kmodinit: /sys/bus/virtio/drivers:", ls("/sys/bus/virtio/drivers"))
	fmt.Println("kmodinit: /sys/bus/virtio/devices:", ls("/sys/bus/virtio/devices"))

	// Ports are announced by the host over virtio-serial's control queue
	// after the driver probes, so they can show up a little later.
	deadline := time.Now().Add(10 * time.Second)
	for ls("/sys/class/virtio-ports") == "" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	ports := ls("/sys/class/virtio-ports")
	fmt.Println("kmodinit: ls /sys/class/virtio-ports:", ports)
	for _, p := range strings.Fields(ports) {
		name, _ := os.ReadFile("/sys/class/virtio-ports/" + p + "/name")
		_, devErr := os.Stat("/dev/" + p)
		fmt.Printf("kmodinit: port %s name=%s /dev/%s present=%v\n", p, strings.TrimSpace(string(name)), p, devErr == nil)
	}
	if up, err := os.ReadFile("/proc/uptime"); err == nil {
		fmt.Println("kmodinit: uptime", strings.Fields(string(up))[0])
	}
	fmt.Println("kmodinit: OK")
	return nil
}

func ls(dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}
