package device

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
)

// BlockHotplugger plugs virtio-blk disks into a running VM. It is separate
// from booting (the VM was started with its Topology) and from VFIO: a VMM
// may offer one and not the other.
type BlockHotplugger interface {
	// PlugBlock adds a.Block as a disk in a.Port and returns once the VMM
	// has the device; the guest may take longer to probe it.
	PlugBlock(ctx context.Context, a BlockAttachment) error
	// UnplugBlock removes the disk, waits until the guest has released
	// it, and closes the host device.
	UnplugBlock(ctx context.Context, a BlockAttachment) error
}

// VFIOHotplugger passes host PCI functions through to a running VM.
type VFIOHotplugger interface {
	PlugVFIO(ctx context.Context, a VFIOAttachment) error
	UnplugVFIO(ctx context.Context, a VFIOAttachment) error
}

// Manager tracks one VM's ports and the devices each container holds. It
// hot-plugs what a container needs beyond the devices cold-plugged at
// boot, and unplugs them when the container goes.
type Manager struct {
	cfg   Config
	block BlockHotplugger // nil: block hot-plug unsupported
	vfio  VFIOHotplugger  // nil: VFIO hot-plug unsupported

	// op serialises whole plug and unplug sequences. QEMU would accept
	// concurrent hot-plugs into different ports, but one sequence at a
	// time keeps rollback simple: a failed Attach undoes exactly what it
	// did, and no other container's device can appear in between.
	op sync.Mutex

	mu     sync.Mutex
	ports  []Port
	owner  []string          // attachment ID holding ports[i], "" if free
	cold   Devices           // plugged at boot
	claims map[string]string // block key "host:M:m" or VFIO function -> container
	hot    map[string]Devices
	nextID int
}

// NewManager manages the ports of topo. cold are the devices Plan placed
// at boot; block or vfio may be nil when the VMM cannot hot-plug them.
func NewManager(cfg Config, topo Topology, cold Devices, block BlockHotplugger, vfio VFIOHotplugger) *Manager {
	m := &Manager{
		cfg: cfg, block: block, vfio: vfio,
		ports:  append([]Port(nil), topo.Ports...),
		cold:   cold,
		claims: map[string]string{},
		hot:    map[string]Devices{},
	}
	m.owner = make([]string, len(m.ports))
	for _, a := range cold.VFIO {
		for i, p := range m.ports {
			if p.Path.String() == a.Port.Path.String() {
				m.owner[i] = a.ID
			}
		}
	}
	return m
}

func blockClaim(b Block) string {
	return "block:" + strconv.FormatInt(b.HostMajor, 10) + ":" + strconv.FormatInt(b.HostMinor, 10)
}

// Attach gives container id every device of req: the cold-plugged VFIO
// functions it asked for, and hot-plugged ones for the rest. It returns
// the union in spec order (see Union), checked by Verify. If any step
// fails, what this call plugged is unplugged again and its ports freed, so
// a failed Attach leaves the VM as it found it.
func (m *Manager) Attach(ctx context.Context, id string, req Request) (_ Devices, retErr error) {
	m.op.Lock()
	defer m.op.Unlock()

	if err := m.claim(id, req); err != nil {
		return Devices{}, err
	}
	var plugged Devices
	defer func() {
		if retErr == nil {
			return
		}
		if err := m.unplug(context.WithoutCancel(ctx), plugged); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("rolling back: %w", err))
		}
		m.unclaim(id, req)
	}()

	for _, b := range req.Blocks {
		if m.block == nil {
			return Devices{}, fmt.Errorf("block device %s: this VM cannot hot-plug disks (hypervisor.machine must be q35): %w", b.HostPath, ErrInvalid)
		}
		port, err := m.takeBlockPort()
		if err != nil {
			return Devices{}, fmt.Errorf("block device %s: %w", b.HostPath, err)
		}
		a := BlockAttachment{ID: port.owner, Block: b, Port: port.Port, Plug: Hot}
		if err := m.block.PlugBlock(ctx, a); err != nil {
			m.freePort(a.ID)
			return Devices{}, fmt.Errorf("hot-plug block device %s: %w", b.HostPath, err)
		}
		plugged.Blocks = append(plugged.Blocks, a)
	}

	cold := m.coldFunctions()
	for _, g := range req.VFIO {
		for _, f := range g.Functions {
			if _, ok := cold[f]; ok {
				continue
			}
			if m.cfg.HotPlugVFIO == "" || m.cfg.HotPlugVFIO == NoPort {
				return Devices{}, fmt.Errorf("VFIO group %s (%s) was not cold-plugged at boot and devices.hot_plug_vfio is %q: set devices.hot_plug_vfio to root-port, bridge-port or switch-port, or devices.cold_plug_vfio for the container that boots the VM: %w",
					g.Group, f, NoPort, ErrInvalid)
			}
			if m.vfio == nil {
				return Devices{}, fmt.Errorf("VFIO group %s: this VM cannot hot-plug PCI devices: %w", g.Group, ErrInvalid)
			}
			port, err := m.takePort(m.cfg.HotPlugVFIO, "vfio")
			if err != nil {
				return Devices{}, fmt.Errorf("VFIO group %s function %s: %w", g.Group, f, err)
			}
			a := VFIOAttachment{ID: port.owner, Group: g, Function: f, Port: port.Port, Plug: Hot, Mode: m.cfg.Mode}
			if err := m.vfio.PlugVFIO(ctx, a); err != nil {
				m.freePort(a.ID)
				return Devices{}, fmt.Errorf("hot-plug VFIO function %s: %w", f, err)
			}
			plugged.VFIO = append(plugged.VFIO, a)
		}
	}

	got := Union(req, m.coldDevices(), plugged)
	if err := Verify(req, got); err != nil {
		return Devices{}, err
	}
	m.mu.Lock()
	h := m.hot[id]
	h.Blocks = append(h.Blocks, plugged.Blocks...)
	h.VFIO = append(h.VFIO, plugged.VFIO...)
	m.hot[id] = h
	m.mu.Unlock()
	return got, nil
}

// Detach unplugs the devices hot-plugged for container id, last first, and
// frees their ports. Cold-plugged devices stay in the VM (the guest was
// booted with them) and are released for another container. A device that
// fails to unplug keeps its port, so that it is never reused while the
// guest may still hold the device.
func (m *Manager) Detach(ctx context.Context, id string) error {
	m.op.Lock()
	defer m.op.Unlock()
	m.mu.Lock()
	h := m.hot[id]
	delete(m.hot, id)
	for k, owner := range m.claims {
		if owner == id {
			delete(m.claims, k)
		}
	}
	m.mu.Unlock()
	return m.unplug(ctx, h)
}

// InUse reports how many hot-plug ports are taken, for tests and status.
func (m *Manager) InUse() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for i, o := range m.owner {
		if o != "" && m.ports[i].Hotplug {
			n++
		}
	}
	return n
}

// unplug removes devices in reverse order of plugging.
func (m *Manager) unplug(ctx context.Context, d Devices) error {
	var errs []error
	for i := len(d.VFIO) - 1; i >= 0; i-- {
		a := d.VFIO[i]
		if err := m.vfio.UnplugVFIO(ctx, a); err != nil {
			errs = append(errs, fmt.Errorf("unplug VFIO function %s: %w", a.Function, err))
			continue
		}
		m.freePort(a.ID)
	}
	for i := len(d.Blocks) - 1; i >= 0; i-- {
		a := d.Blocks[i]
		if err := m.block.UnplugBlock(ctx, a); err != nil {
			errs = append(errs, fmt.Errorf("unplug block device %s: %w", a.Block.HostPath, err))
			continue
		}
		m.freePort(a.ID)
	}
	return errors.Join(errs...)
}

// claim records that container id uses the host devices of req, refusing
// devices another container holds: two virtio disks over one host device
// would corrupt it, and a VFIO function can be in one place only.
func (m *Manager) claim(id string, req Request) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var keys []string
	for _, b := range req.Blocks {
		keys = append(keys, blockClaim(b))
	}
	for _, g := range req.VFIO {
		for _, f := range g.Functions {
			keys = append(keys, string(f))
		}
	}
	seen := map[string]bool{}
	for _, k := range keys {
		if owner, ok := m.claims[k]; ok || seen[k] {
			if !ok {
				owner = id
			}
			return fmt.Errorf("device %s is already attached to container %q: %w", k, owner, ErrInvalid)
		}
		seen[k] = true
	}
	for _, k := range keys {
		m.claims[k] = id
	}
	return nil
}

func (m *Manager) unclaim(id string, req Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, b := range req.Blocks {
		if m.claims[blockClaim(b)] == id {
			delete(m.claims, blockClaim(b))
		}
	}
	for _, g := range req.VFIO {
		for _, f := range g.Functions {
			if m.claims[string(f)] == id {
				delete(m.claims, string(f))
			}
		}
	}
}

// takeBlockPort reserves a port for a disk, keeping the ports of the
// hot_plug_vfio type for VFIO devices while other ports are free: a disk
// can go anywhere, a VFIO function only where the configuration says.
func (m *Manager) takeBlockPort() (takenPort, error) {
	if v := m.cfg.HotPlugVFIO; v != "" && v != NoPort {
		if p, ok := m.takeFree(func(p Port) bool { return p.Type != v }, "blk"); ok {
			return p, nil
		}
	}
	return m.takePort("", "blk")
}

type takenPort struct {
	Port
	owner string
}

// takePort reserves the first free hot-plug port of type want ("" means
// any type) and names the attachment that will use it.
func (m *Manager) takePort(want PortType, prefix string) (takenPort, error) {
	if p, ok := m.takeFree(func(p Port) bool { return want == "" || p.Type == want }, prefix); ok {
		return p, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	total := 0
	for _, p := range m.ports {
		if p.Hotplug && (want == "" || p.Type == want) {
			total++
		}
	}
	key := map[PortType]string{"": "pcie_root_port", RootPort: "pcie_root_port", BridgePort: "pci_bridges", SwitchPort: "pcie_switch_port"}[want]
	kind := "hot-plug port"
	if want != "" {
		kind = string(want) + " hot-plug port"
	}
	return takenPort{}, fmt.Errorf("all %d %ss are in use (raise devices.%s in the configuration): %w", total, kind, key, ErrNoPort)
}

// takeFree reserves the first free hot-plug port that ok accepts.
func (m *Manager) takeFree(ok func(Port) bool, prefix string) (takenPort, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, p := range m.ports {
		if !p.Hotplug || m.owner[i] != "" || !ok(p) {
			continue
		}
		id := prefix + strconv.Itoa(m.nextID)
		m.nextID++
		m.owner[i] = id
		return takenPort{Port: p, owner: id}, true
	}
	return takenPort{}, false
}

func (m *Manager) freePort(owner string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, o := range m.owner {
		if o == owner {
			m.owner[i] = ""
		}
	}
}

func (m *Manager) coldFunctions() map[PCIAddress]VFIOAttachment {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[PCIAddress]VFIOAttachment{}
	for _, a := range m.cold.VFIO {
		out[a.Function] = a
	}
	return out
}

func (m *Manager) coldDevices() Devices {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cold
}
