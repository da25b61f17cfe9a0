package cgroup

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	systemd "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// systemdV2 asks systemd (over D-Bus) for a transient scope per sandbox,
// "berth-<name>.scope" in the configured slice, on a cgroup v2 host: with
// systemd as PID 1, systemd owns the tree and a cgroup written behind its
// back may be moved or removed by it.
//
// A scope cannot exist without a process, so the unit is started by the
// first Add (the VMM) with the limits given to New; later Adds join it.
//
// Paths are containerd's systemd form "<slice>:<prefix>:<name>".
//
// Not exercised on the development hosts, which do not run systemd; the
// configuration refuses this driver there (see config.Host).
type systemdV2 struct{ mount string }

func newSystemd(mount string) Manager { return &systemdV2{mount: mount} }

func (m *systemdV2) Name() string { return "systemd v2" }

// ParseSystemdPath splits "<slice>:<prefix>:<name>" into the slice and
// the scope unit name "<prefix>-<name>.scope".
func ParseSystemdPath(p string) (slice, unit string, err error) {
	parts := strings.Split(p, ":")
	if len(parts) != 3 || !strings.HasSuffix(parts[0], ".slice") || parts[1] == "" || parts[2] == "" {
		return "", "", fmt.Errorf("systemd cgroup path %q is not <slice>:<prefix>:<name>: %w", p, ErrUnsupported)
	}
	return parts[0], parts[1] + "-" + parts[2] + ".scope", nil
}

// sliceDir is where systemd puts a slice's cgroup: "a-b.slice" lives in
// "a.slice/a-b.slice".
func sliceDir(slice string) string {
	name := strings.TrimSuffix(slice, ".slice")
	if name == "-" || name == "" {
		return ""
	}
	var dir, prefix string
	for _, part := range strings.Split(name, "-") {
		prefix += part
		dir = filepath.Join(dir, prefix+".slice")
		prefix += "-"
	}
	return dir
}

func (m *systemdV2) New(_ context.Context, path string, l Limits) (Cgroup, error) {
	slice, unit, err := ParseSystemdPath(path)
	if err != nil {
		return nil, err
	}
	return &systemdScope{m: m, path: path, slice: slice, unit: unit, limits: l}, nil
}

func (m *systemdV2) Remove(ctx context.Context, path string) error {
	_, unit, err := ParseSystemdPath(path)
	if err != nil {
		return err
	}
	return stopUnit(ctx, unit)
}

type systemdScope struct {
	m                 *systemdV2
	path, slice, unit string
	mu                sync.Mutex
	started           bool
	limits            Limits
}

func (c *systemdScope) Path() string { return c.path }

func (c *systemdScope) Add(ctx context.Context, pid int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return writeProcs(filepath.Join(c.dir(), "cgroup.procs"), pid)
	}
	conn, err := systemd.NewSystemConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("connect to systemd: %w", err)
	}
	defer conn.Close()
	props := append([]systemd.Property{
		systemd.PropDescription("berth sandbox " + c.unit),
		systemd.PropSlice(c.slice),
		systemd.PropPids(uint32(pid)),
		{Name: "Delegate", Value: dbus.MakeVariant(true)},
		{Name: "MemoryAccounting", Value: dbus.MakeVariant(true)},
		{Name: "CPUAccounting", Value: dbus.MakeVariant(true)},
		{Name: "DefaultDependencies", Value: dbus.MakeVariant(false)},
	}, unitLimits(c.limits)...)
	done := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, c.unit, "replace", props, done); err != nil {
		return fmt.Errorf("start systemd scope %s: %w", c.unit, err)
	}
	if res := <-done; res != "done" {
		return fmt.Errorf("start systemd scope %s: job %s", c.unit, res)
	}
	c.started = true
	return nil
}

func (c *systemdScope) dir() string {
	return filepath.Join(c.m.mount, sliceDir(c.slice), c.unit)
}

func (c *systemdScope) Update(ctx context.Context, l Limits) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.limits
	c.limits = l
	if !c.started {
		return nil
	}
	conn, err := systemd.NewSystemConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("connect to systemd: %w", err)
	}
	defer conn.Close()
	props := unitLimits(l)
	if l.CPUs == "" && was.CPUs != "" {
		// An empty AllowedCPUs is every CPU again.
		props = append(props, systemd.Property{Name: "AllowedCPUs", Value: dbus.MakeVariant([]byte{})})
	}
	if err := conn.SetUnitPropertiesContext(ctx, c.unit, true, props...); err != nil {
		return fmt.Errorf("update systemd scope %s: %w", c.unit, err)
	}
	return nil
}

func (c *systemdScope) Pids(context.Context) ([]int, error) {
	return readProcs(filepath.Join(c.dir(), "cgroup.procs"))
}

func (c *systemdScope) Delete(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started {
		return nil
	}
	return stopUnit(ctx, c.unit)
}

func stopUnit(ctx context.Context, unit string) error {
	conn, err := systemd.NewSystemConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("connect to systemd: %w", err)
	}
	defer conn.Close()
	done := make(chan string, 1)
	if _, err := conn.StopUnitContext(ctx, unit, "replace", done); err != nil {
		var de dbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit" {
			return nil // already gone
		}
		return fmt.Errorf("stop systemd scope %s: %w", unit, err)
	}
	<-done
	return nil
}

// unitLimits are systemd's spellings of Limits (as runc's systemd driver
// writes them).
func unitLimits(l Limits) []systemd.Property {
	max := uint64(1<<64 - 1) // "infinity"
	mem := max
	if l.MemoryBytes > 0 {
		mem = uint64(l.MemoryBytes)
	}
	quota := max
	if l.CPUQuotaUsec > 0 && l.CPUPeriodUsec > 0 {
		quota = uint64(l.CPUQuotaUsec) * 1000000 / l.CPUPeriodUsec
	}
	props := []systemd.Property{
		{Name: "MemoryMax", Value: dbus.MakeVariant(mem)},
		{Name: "CPUQuotaPerSecUSec", Value: dbus.MakeVariant(quota)},
	}
	if l.CPUShares > 0 {
		props = append(props, systemd.Property{Name: "CPUWeight", Value: dbus.MakeVariant(sharesToWeight(l.CPUShares))})
	}
	// A list that does not parse was refused where it came in
	// (sandbox.limitsLocked); it cannot reach here.
	if mask, err := cpuMask(l.CPUs); err == nil && len(mask) > 0 {
		props = append(props, systemd.Property{Name: "AllowedCPUs", Value: dbus.MakeVariant(mask)})
	}
	return props
}
