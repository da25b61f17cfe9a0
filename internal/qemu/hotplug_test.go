package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/qemu/qmp"
)

func topologyMachine() Machine {
	m := baseMachine(Q35, TCG)
	m.PCIeRootPorts = []PCIeRootPort{{ID: "rpc0", Slot: 0x10, Chassis: 1}, {ID: "rp0", Slot: 0x11, Chassis: 2}}
	m.PCIeSwitches = []PCIeSwitch{{
		RootPort:   PCIeRootPort{ID: "swrp0", Slot: 0x12, Chassis: 3},
		UpstreamID: "swup0",
		Downstream: []PCIeDownstreamPort{{ID: "swdp0", Slot: 0, Chassis: 4}, {ID: "swdp1", Slot: 1, Chassis: 5}},
	}}
	m.PCIBridges = []PCIBridge{{ID: "br0", Slot: 0x13}}
	return m
}

func TestArgsPCIeTopology(t *testing.T) {
	m := topologyMachine()
	m.VFIODevices = []VFIODevice{{ID: "vfio0", Host: "0000:01:00.0", Bus: "rpc0"}}
	got, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-device", "pcie-root-port,id=rpc0,bus=pcie.0,addr=0x10,chassis=1,io-reserve=0",
		"-device", "pcie-root-port,id=rp0,bus=pcie.0,addr=0x11,chassis=2,io-reserve=0",
		"-device", "pcie-pci-bridge,id=br0,bus=pcie.0,addr=0x13",
		"-device", "pcie-root-port,id=swrp0,bus=pcie.0,addr=0x12,chassis=3,io-reserve=0",
		"-device", "x3130-upstream,id=swup0,bus=swrp0",
		"-device", "xio3130-downstream,id=swdp0,bus=swup0,addr=0x00,chassis=4,slot=0",
		"-device", "xio3130-downstream,id=swdp1,bus=swup0,addr=0x01,chassis=5,slot=0",
		"-device", "vfio-pci,id=vfio0,host=0000:01:00.0,bus=rpc0,addr=0x00",
	}
	if !containsSeq(got, want) {
		t.Errorf("args:\n%s\nwant the sequence:\n%s", strings.Join(got, " "), strings.Join(want, " "))
	}
}

func TestValidatePCIe(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(m *Machine)
		field string
	}{
		{"microvm", func(m *Machine) { m.Type = MicroVM }, "Type"},
		{"slot 0", func(m *Machine) { m.PCIeRootPorts[0].Slot = 0 }, "PCIeRootPorts[0].Slot"},
		{"slot 0x1f", func(m *Machine) { m.PCIeRootPorts[0].Slot = 0x1f }, "PCIeRootPorts[0].Slot"},
		{"slot twice", func(m *Machine) { m.PCIBridges[0].Slot = 0x10 }, "PCIBridges[0].Slot"},
		{"chassis twice", func(m *Machine) { m.PCIeSwitches[0].Downstream[1].Chassis = 1 }, "PCIeSwitches[0].Downstream[1].Chassis"},
		{"bad host", func(m *Machine) {
			m.VFIODevices = []VFIODevice{{ID: "v", Host: "01:00.0", Bus: "rp0"}}
		}, "VFIODevices[0].Host"},
		{"unknown bus", func(m *Machine) {
			m.VFIODevices = []VFIODevice{{ID: "v", Host: "0000:01:00.0", Bus: "nope"}}
		}, "VFIODevices[0].Bus"},
		{"reserved id", func(m *Machine) { m.PCIeRootPorts[1].ID = "berth-rp" }, "PCIeRootPorts[1].ID"},
	} {
		m := topologyMachine()
		tc.edit(&m)
		err := m.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%s: Validate = %v, want a problem with %s", tc.name, err, tc.field)
		}
	}
	if err := topologyMachine().Validate(); err != nil {
		t.Errorf("good topology: %v", err)
	}
}

// scriptedQMP is a QMP peer that answers each command with a canned reply
// and optional events, and records what it received.
type scriptedQMP struct {
	t       *testing.T
	replies map[string][]string // command -> lines to send, in order
	got     chan string
}

func newVMWithQMP(t *testing.T, replies map[string][]string) (*VM, *scriptedQMP) {
	t.Helper()
	// A unix socket pair, as QEMU's QMP socket is: disks are passed to
	// QEMU as descriptors (add-fd).
	clientEnd, serverEnd := unixPair(t)
	p := &scriptedQMP{t: t, replies: replies, got: make(chan string, 100)}
	go func() {
		r := bufio.NewReader(serverEnd)
		serverEnd.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\n"))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			json.Unmarshal([]byte(line), &req)
			if req.Execute == "qmp_capabilities" {
				serverEnd.Write([]byte(`{"return": {}}` + "\n"))
				continue
			}
			p.got <- strings.TrimSpace(line)
			out := []string{`{"return": {}, "id": $ID}`}
			if req.Execute == "add-fd" {
				out = []string{`{"return": {"fdset-id": 16, "fd": 9}, "id": $ID}`}
			}
			if q := p.replies[req.Execute]; len(q) > 0 {
				out = strings.Split(q[0], "\n")
				p.replies[req.Execute] = q[1:]
			}
			for _, o := range out {
				o = strings.ReplaceAll(o, "$ID", string(req.ID))
				serverEnd.Write([]byte(o + "\n"))
			}
		}
	}()
	c, err := qmp.NewClient(context.Background(), clientEnd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); serverEnd.Close() })
	return &VM{client: c, pid: 4242, done: make(chan struct{})}, p
}

func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "qmp")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

func (p *scriptedQMP) sent() []string {
	var out []string
	for {
		select {
		case l := <-p.got:
			// Drop the request id, which the client numbers.
			if i := strings.LastIndex(l, `,"id":`); i > 0 {
				l = l[:i] + "}"
			}
			out = append(out, l)
		default:
			return out
		}
	}
}

func tempDisk(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHotplugAndUnplugBlockQMP(t *testing.T) {
	disk := tempDisk(t)
	// DEVICE_DELETED for the virtio backend (no "device") comes first and
	// must not end the wait; it arrives before device_del's reply, which
	// only a subscription made beforehand catches.
	v, p := newVMWithQMP(t, map[string][]string{
		"device_del": {`{"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/blk0/virtio-backend"}, "timestamp": {"seconds": 1, "microseconds": 0}}` + "\n" +
			`{"event": "DEVICE_DELETED", "data": {"device": "blk0", "path": "/machine/peripheral/blk0"}, "timestamp": {"seconds": 1, "microseconds": 0}}` + "\n" +
			`{"return": {}, "id": $ID}`},
	})
	d := BlockDevice{ID: "blk0", Path: disk, Bus: "rp0"}
	ctx := context.Background()
	if err := v.HotplugBlock(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := v.UnplugBlock(ctx, d); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"execute":"add-fd","arguments":{"fdset-id":16}}`,
		`{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"drive-blk0","read-only":false,"file":{"driver":"file","filename":"/dev/fdset/16"}}}`,
		`{"execute":"device_add","arguments":{"driver":"virtio-blk-pci","id":"blk0","bus":"rp0","addr":"0x00","drive":"drive-blk0"}}`,
		`{"execute":"device_del","arguments":{"id":"blk0"}}`,
		`{"execute":"blockdev-del","arguments":{"node-name":"drive-blk0"}}`,
		`{"execute":"remove-fd","arguments":{"fdset-id":16}}`,
	}
	if got := p.sent(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("QMP sent:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestHotplugBlockRollsBackNode(t *testing.T) {
	v, p := newVMWithQMP(t, map[string][]string{
		"device_add": {`{"error": {"class": "GenericError", "desc": "Bus 'rp0' does not support hotplugging"}, "id": $ID}`},
	})
	err := v.HotplugBlock(context.Background(), BlockDevice{ID: "blk0", Path: tempDisk(t), Bus: "rp0"})
	if err == nil || !strings.Contains(err.Error(), "does not support hotplugging") {
		t.Fatalf("HotplugBlock = %v", err)
	}
	got := p.sent()
	if len(got) != 5 || !strings.Contains(got[3], `"blockdev-del"`) || !strings.Contains(got[4], `"remove-fd"`) {
		t.Errorf("after a failed device_add the node must be deleted; sent %v", got)
	}
}

func TestUnplugTimesOut(t *testing.T) {
	v, _ := newVMWithQMP(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := v.UnplugDevice(ctx, "blk0")
	if !errors.Is(err, ErrUnplugTimeout) {
		t.Fatalf("UnplugDevice without DEVICE_DELETED = %v, want ErrUnplugTimeout", err)
	}
}

func TestUnplugUnknownDeviceIsDone(t *testing.T) {
	v, _ := newVMWithQMP(t, map[string][]string{
		"device_del": {`{"error": {"class": "DeviceNotFound", "desc": "Device 'blk0' not found"}, "id": $ID}`},
	})
	if err := v.UnplugDevice(context.Background(), "blk0"); err != nil {
		t.Fatal(err)
	}
}

// TestTopologyAgainstQEMU starts the real QEMU, paused (-S), with every
// kind of port, and checks what QEMU itself says: the ports are at the
// slots planned, disks hot-plug into a root port, a switch downstream port
// and a bridge slot, and vfio-pci accepts the properties Berth uses (on
// this host, which has no IOMMU, QEMU then fails only on the missing host
// device).
func TestTopologyAgainstQEMU(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, Q35)
	m.Paused = true
	top := topologyMachine()
	m.PCIeRootPorts, m.PCIeSwitches, m.PCIBridges = top.PCIeRootPorts, top.PCIeSwitches, top.PCIBridges
	v := startVM(t, m)
	c := v.QMP()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var props []struct {
		Name string `json:"name"`
	}
	if err := c.Execute(ctx, "device-list-properties", map[string]string{"typename": "vfio-pci"}, &props); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, p := range props {
		have[p.Name] = true
	}
	for _, want := range []string{"host", "addr", "multifunction", "x-pci-device-id"} {
		if !have[want] {
			t.Errorf("vfio-pci has no property %q", want)
		}
	}

	for i, bus := range []struct {
		name string
		addr int
	}{{"rp0", 0}, {"swdp1", 0}, {"br0", 1}} {
		d := BlockDevice{ID: "blk" + string(rune('0'+i)), Path: tempDisk(t), Bus: bus.name, Addr: bus.addr}
		if err := v.HotplugBlock(ctx, d); err != nil {
			t.Errorf("hot-plug into %s: %v", bus.name, err)
		}
	}
	// With the vCPUs stopped the firmware has not numbered the buses
	// behind bridges, so query-pci cannot show them; QEMU's device tree
	// can: each port's bus must hold the device planned for it.
	var qtree string
	if err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info qtree"}, &qtree); err != nil {
		t.Fatal(err)
	}
	for bus, dev := range map[string]string{
		"pcie.0": `dev: pcie-root-port, id "rpc0"`, "rp0": `dev: virtio-blk-pci, id "blk0"`,
		"swrp0": `dev: x3130-upstream, id "swup0"`, "swup0": `dev: xio3130-downstream, id "swdp0"`,
		"swdp1": `dev: virtio-blk-pci, id "blk1"`, "br0": `dev: virtio-blk-pci, id "blk2"`,
	} {
		if !busHolds(qtree, bus, dev) {
			t.Errorf("bus %s does not hold %s; info qtree:\n%s", bus, dev, qtree)
		}
	}
	for _, want := range []string{`id "rp0"`, "addr = 11.0", `id "br0"`, "addr = 13.0", `id "swrp0"`, "addr = 12.0", "chassis = 5"} {
		if !strings.Contains(qtree, want) {
			t.Errorf("info qtree lacks %q", want)
		}
	}

	err := v.HotplugVFIO(ctx, VFIODevice{ID: "vfio0", Host: "0000:7f:1f.7", Bus: "rpc0"})
	if err == nil || !strings.Contains(err.Error(), "no such host device") {
		t.Errorf("HotplugVFIO of an absent function = %v, want QEMU's 'no such host device'", err)
	}
}

// TestColdPlugVFIOArgsAgainstQEMU: QEMU parses the cold-plug vfio-pci
// argument and fails on the absent host device, not on syntax.
func TestColdPlugVFIOArgsAgainstQEMU(t *testing.T) {
	bin := requireQEMU(t)
	kernel := requireKernel(t)
	m := testMachine(t, bin, kernel, Q35)
	m.Paused = true
	m.PCIeRootPorts = []PCIeRootPort{{ID: "rpc0", Slot: 0x10, Chassis: 1}}
	m.VFIODevices = []VFIODevice{{ID: "vfio0", Host: "0000:7f:1f.7", Bus: "rpc0"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Start(ctx, m, StartOptions{DieWithParent: true})
	var pe *ProcessError
	if !errors.As(err, &pe) || !strings.Contains(pe.Output, "vfio /sys/bus/pci/devices/0000:7f:1f.7: no such host device") {
		t.Fatalf("Start = %v, want QEMU to reject only the missing host device", err)
	}
}

// busHolds reports whether, in "info qtree" output, the bus named bus has
// a device line containing dev among its children.
func busHolds(qtree, bus, dev string) bool {
	lines := strings.Split(qtree, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "bus: "+bus {
			continue
		}
		indent := len(l) - len(strings.TrimLeft(l, " "))
		for _, m := range lines[i+1:] {
			if ind := len(m) - len(strings.TrimLeft(m, " ")); ind <= indent && strings.TrimSpace(m) != "" {
				break
			}
			if strings.Contains(m, dev) {
				return true
			}
		}
	}
	return false
}
