package device

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// fakeVMM records plug and unplug calls and fails the call whose number
// (counting from 1, plugs and unplugs alike) is in failAt: a failpoint.
type fakeVMM struct {
	calls  []string
	n      int
	failAt map[int]bool
	in     map[string]bool // device IDs currently in the VM
}

func newFakeVMM() *fakeVMM { return &fakeVMM{failAt: map[int]bool{}, in: map[string]bool{}} }

func (f *fakeVMM) step(op, id string) error {
	f.n++
	f.calls = append(f.calls, op+" "+id)
	if f.failAt[f.n] {
		return fmt.Errorf("failpoint %d (%s %s)", f.n, op, id)
	}
	if strings.HasPrefix(op, "plug") {
		if f.in[id] {
			return fmt.Errorf("%s plugged twice", id)
		}
		f.in[id] = true
	} else {
		delete(f.in, id)
	}
	return nil
}

func (f *fakeVMM) PlugBlock(_ context.Context, a BlockAttachment) error {
	return f.step("plug-block", a.ID)
}
func (f *fakeVMM) UnplugBlock(_ context.Context, a BlockAttachment) error {
	return f.step("unplug-block", a.ID)
}
func (f *fakeVMM) PlugVFIO(_ context.Context, a VFIOAttachment) error {
	return f.step("plug-vfio", a.ID)
}
func (f *fakeVMM) UnplugVFIO(_ context.Context, a VFIOAttachment) error {
	return f.step("unplug-vfio", a.ID)
}

func blocks(n int, prefix string) []Block {
	var out []Block
	for i := 0; i < n; i++ {
		out = append(out, Block{HostPath: fmt.Sprintf("/dev/loop%s%d", prefix, i), HostMajor: 7, HostMinor: int64(len(prefix)*10 + i),
			ContainerPath: fmt.Sprintf("/dev/xd%c", 'a'+i), MountIndex: -1})
	}
	return out
}

func group(g string, fns ...PCIAddress) VFIOGroup {
	return VFIOGroup{Group: g, ContainerPath: "/dev/vfio/" + g, HostMajor: 243, HostMinor: 1, Functions: fns}
}

// TestEveryCombinationHandsOverEveryDevice is the R3 table: for every
// (vfio_mode, cold_plug_vfio, hot_plug_vfio), with and without block
// devices and with and without VFIO groups, the container that boots the
// VM and a container created later each receive every device they asked
// for, or a named configuration error when no setting allows a VFIO
// device in. A block device is never dropped.
func TestEveryCombinationHandsOverEveryDevice(t *testing.T) {
	for _, mode := range VFIOModes {
		for _, cold := range PortTypes {
			for _, hot := range PortTypes {
				for _, nBlocks := range []int{0, 2} {
					for _, withVFIO := range []bool{false, true} {
						name := fmt.Sprintf("%s/cold=%s/hot=%s/blocks=%d/vfio=%v", mode, cold, hot, nBlocks, withVFIO)
						t.Run(name, func(t *testing.T) {
							checkCombination(t, Config{RootPorts: 3, Bridges: 1, SwitchPorts: 3, ColdPlugVFIO: cold, HotPlugVFIO: hot, Mode: mode}, nBlocks, withVFIO)
						})
					}
				}
			}
		}
	}
}

func checkCombination(t *testing.T, cfg Config, nBlocks int, withVFIO bool) {
	ctx := context.Background()
	boot := Request{Blocks: blocks(nBlocks, "")}
	later := Request{Blocks: blocks(nBlocks, "x")}
	if withVFIO {
		boot.VFIO = []VFIOGroup{group("12", "0000:01:00.0", "0000:01:00.1")}
		later.VFIO = []VFIOGroup{group("13", "0000:02:00.0")}
	}
	topo, coldDevs, err := Plan(cfg, boot.VFIO)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	if cfg.ColdPlugVFIO == NoPort && coldDevs.Len() != 0 {
		t.Fatalf("cold-plug off but Plan placed %d devices", coldDevs.Len())
	}
	for _, a := range coldDevs.VFIO {
		if a.Port.Type != cfg.ColdPlugVFIO || a.Port.Hotplug || a.Plug != Cold || a.Mode != cfg.Mode {
			t.Errorf("cold device %+v not placed on a %s port", a, cfg.ColdPlugVFIO)
		}
	}
	vmm := newFakeVMM()
	m := NewManager(cfg, topo, coldDevs, vmm, vmm)

	vfioPossible := cfg.HotPlugVFIO != NoPort
	for i, c := range []struct {
		id       string
		req      Request
		coldOnly bool // its VFIO may come from cold-plug
	}{{"boot", boot, true}, {"later", later, false}} {
		got, err := m.Attach(ctx, c.id, c.req)
		canVFIO := vfioPossible || (c.coldOnly && cfg.ColdPlugVFIO != NoPort)
		if len(c.req.VFIO) > 0 && !canVFIO {
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "hot_plug_vfio") {
				t.Fatalf("%s: want an error naming hot_plug_vfio, got %v", c.id, err)
			}
			if len(vmm.in) != 0 && i == 0 {
				t.Fatalf("%s: failed Attach left devices in the VM: %v", c.id, vmm.in)
			}
			// Without the VFIO group the same container gets its disks.
			c.req.VFIO = nil
			if got, err = m.Attach(ctx, c.id, c.req); err != nil {
				t.Fatalf("%s without VFIO: %v", c.id, err)
			}
		} else if err != nil {
			t.Fatalf("%s: Attach: %v", c.id, err)
		}
		if err := Verify(c.req, got); err != nil {
			t.Fatalf("%s: %v", c.id, err)
		}
		if len(got.Blocks) != len(c.req.Blocks) {
			t.Fatalf("%s: %d block devices reached the container, want %d", c.id, len(got.Blocks), len(c.req.Blocks))
		}
		for j, b := range got.Blocks {
			if b.Block.ContainerPath != c.req.Blocks[j].ContainerPath || b.Plug != Hot || !b.Port.Hotplug {
				t.Errorf("%s: block %d = %+v, want %s hot-plugged, in spec order", c.id, j, b, c.req.Blocks[j].ContainerPath)
			}
		}
		var wantFns []PCIAddress
		for _, g := range c.req.VFIO {
			wantFns = append(wantFns, g.Functions...)
		}
		if len(got.VFIO) != len(wantFns) {
			t.Fatalf("%s: %d VFIO functions reached the container, want %d", c.id, len(got.VFIO), len(wantFns))
		}
		for j, a := range got.VFIO {
			if a.Function != wantFns[j] {
				t.Errorf("%s: VFIO %d is %s, want %s (spec order)", c.id, j, a.Function, wantFns[j])
			}
			wantPlug := Hot
			if c.coldOnly && cfg.ColdPlugVFIO != NoPort {
				wantPlug = Cold
			}
			if a.Plug != wantPlug {
				t.Errorf("%s: VFIO %s plugged %s, want %s", c.id, a.Function, a.Plug, wantPlug)
			}
			if a.Plug == Hot && a.Port.Type != cfg.HotPlugVFIO {
				t.Errorf("%s: hot VFIO %s on a %s, want %s", c.id, a.Function, a.Port.Type, cfg.HotPlugVFIO)
			}
		}
	}
	for _, id := range []string{"later", "boot"} {
		if err := m.Detach(ctx, id); err != nil {
			t.Fatalf("Detach %s: %v", id, err)
		}
	}
	if len(vmm.in) != 0 || m.InUse() != 0 {
		t.Fatalf("after Detach: devices %v still in the VM, %d ports in use", vmm.in, m.InUse())
	}
}

// TestSeed002ColdPlugRootPortKeepsHotPluggedDisk is seed 002 in unit form:
// cold_plug_vfio = root-port with no VFIO device present, and a block
// device mapped to /dev/xda that must reach the container.
func TestSeed002ColdPlugRootPortKeepsHotPluggedDisk(t *testing.T) {
	cfg := Config{RootPorts: 1, ColdPlugVFIO: RootPort, HotPlugVFIO: NoPort, Mode: ModeGuestKernel}
	topo, cold, err := Plan(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Blocks: []Block{{HostPath: "/dev/loop3", HostMajor: 7, HostMinor: 3, ContainerPath: "/dev/xda", MountIndex: -1}}}
	got, err := NewManager(cfg, topo, cold, newFakeVMM(), newFakeVMM()).Attach(context.Background(), "c", req)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Blocks) != 1 || got.Blocks[0].Block.ContainerPath != "/dev/xda" || got.Blocks[0].Port.Path.String() != "10/00" {
		t.Fatalf("got %+v, want /dev/xda in the root port at 00:10.0", got)
	}
}

// TestAttachRollsBackOnFailpoint fails each plug of a three-device request
// in turn and checks that the VM and the ports are as before.
func TestAttachRollsBackOnFailpoint(t *testing.T) {
	cfg := Config{RootPorts: 4, HotPlugVFIO: RootPort, Mode: ModeVFIO}
	req := Request{Blocks: blocks(2, ""), VFIO: []VFIOGroup{group("12", "0000:01:00.0")}}
	for fail := 1; fail <= 3; fail++ {
		t.Run(fmt.Sprint("fail plug ", fail), func(t *testing.T) {
			topo, cold, _ := Plan(cfg, nil)
			vmm := newFakeVMM()
			vmm.failAt[fail] = true
			m := NewManager(cfg, topo, cold, vmm, vmm)
			if _, err := m.Attach(context.Background(), "c", req); err == nil || !strings.Contains(err.Error(), "failpoint") {
				t.Fatalf("Attach = %v, want the failpoint's error", err)
			}
			if len(vmm.in) != 0 || m.InUse() != 0 {
				t.Fatalf("after rollback: %v in the VM, %d ports in use; calls %v", vmm.in, m.InUse(), vmm.calls)
			}
			// The same request succeeds afterwards: nothing stayed claimed.
			if _, err := m.Attach(context.Background(), "c", req); err != nil {
				t.Fatalf("retry: %v", err)
			}
		})
	}
}

// TestFailedUnplugKeepsPort: a port whose device may still be in the guest
// is never handed out again.
func TestFailedUnplugKeepsPort(t *testing.T) {
	cfg := Config{RootPorts: 1}
	topo, cold, _ := Plan(cfg, nil)
	vmm := newFakeVMM()
	m := NewManager(cfg, topo, cold, vmm, nil)
	if _, err := m.Attach(context.Background(), "a", Request{Blocks: blocks(1, "")}); err != nil {
		t.Fatal(err)
	}
	vmm.failAt[vmm.n+1] = true
	if err := m.Detach(context.Background(), "a"); err == nil {
		t.Fatal("Detach hid the unplug failure")
	}
	_, err := m.Attach(context.Background(), "b", Request{Blocks: blocks(1, "y")})
	if !errors.Is(err, ErrNoPort) || !strings.Contains(err.Error(), "pcie_root_port") {
		t.Fatalf("Attach after a failed unplug = %v, want ErrNoPort naming pcie_root_port", err)
	}
}

func TestAttachRefusesSharedDevice(t *testing.T) {
	cfg := Config{RootPorts: 2}
	topo, cold, _ := Plan(cfg, nil)
	m := NewManager(cfg, topo, cold, newFakeVMM(), nil)
	if _, err := m.Attach(context.Background(), "a", Request{Blocks: blocks(1, "")}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(context.Background(), "b", Request{Blocks: blocks(1, "")}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("second container on the same disk: %v", err)
	}
}

func TestPlanTopology(t *testing.T) {
	g := group("12", "0000:01:00.0", "0000:01:00.1")
	for _, tc := range []struct {
		cfg       Config
		wantPaths []string // hot-plug ports, then cold ports
		wantCold  []string
	}{
		{Config{RootPorts: 2}, []string{"10/00", "11/00"}, nil},
		{Config{RootPorts: 1, ColdPlugVFIO: RootPort}, []string{"12/00", "10/00", "11/00"}, []string{"10/00", "11/00"}},
		{Config{SwitchPorts: 1, ColdPlugVFIO: SwitchPort}, []string{"10/00/02/00", "10/00/00/00", "10/00/01/00"}, []string{"10/00/00/00", "10/00/01/00"}},
		{Config{RootPorts: 1, ColdPlugVFIO: BridgePort}, nil, []string{"11/01", "11/02"}},
	} {
		topo, cold, err := Plan(tc.cfg, []VFIOGroup{g})
		if err != nil {
			t.Fatalf("%+v: %v", tc.cfg, err)
		}
		var paths, coldPaths []string
		for _, p := range topo.Ports {
			paths = append(paths, p.Path.String())
		}
		for _, a := range cold.VFIO {
			coldPaths = append(coldPaths, a.Port.Path.String())
		}
		if tc.wantPaths != nil && strings.Join(paths, " ") != strings.Join(tc.wantPaths, " ") {
			t.Errorf("%+v: ports %v, want %v", tc.cfg, paths, tc.wantPaths)
		}
		if strings.Join(coldPaths, " ") != strings.Join(tc.wantCold, " ") {
			t.Errorf("%+v: cold ports %v, want %v", tc.cfg, coldPaths, tc.wantCold)
		}
	}
	if _, _, err := Plan(Config{RootPorts: RootSlots + 1}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("too many root ports: %v", err)
	}
}

func TestPCIPathRoundTrip(t *testing.T) {
	for _, s := range []string{"10/00", "10/00/02/00", "11/1f"} {
		p, err := ParsePCIPath(s)
		if err != nil || p.String() != s {
			t.Errorf("ParsePCIPath(%q) = %v, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "1/00", "10/20", "zz", "10//00"} {
		if _, err := ParsePCIPath(s); err == nil {
			t.Errorf("ParsePCIPath(%q) accepted", s)
		}
	}
}

// fakeSysfs builds a sysfs tree under a temp dir.
type fakeSysfs struct {
	t    *testing.T
	root string
	blk  map[string][2]int64 // /dev path -> numbers, for BlockNumbers
}

func newFakeSysfs(t *testing.T) *fakeSysfs {
	return &fakeSysfs{t: t, root: t.TempDir(), blk: map[string][2]int64{}}
}

func (f *fakeSysfs) write(p, content string) {
	full := filepath.Join(f.root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSysfs) symlink(target, p string) {
	full := filepath.Join(f.root, p)
	os.MkdirAll(filepath.Dir(full), 0o755)
	if err := os.Symlink(target, full); err != nil {
		f.t.Fatal(err)
	}
}

// pciFunction adds a function to the PCI bus and to an IOMMU group.
func (f *fakeSysfs) pciFunction(group, bdf, driver string) {
	f.write("sys/bus/pci/devices/"+bdf+"/vendor", "0x8086\n")
	if driver != "" {
		f.symlink("../../../bus/pci/drivers/"+driver, "sys/bus/pci/devices/"+bdf+"/driver")
	}
	f.write("sys/kernel/iommu_groups/"+group+"/devices/"+bdf+"/vendor", "")
}

type fakeHost struct {
	Sysfs
	f *fakeSysfs
}

func (h fakeHost) BlockNumbers(p string) (int64, int64, bool) {
	n, ok := h.f.blk[p]
	return n[0], n[1], ok
}

func TestFromSpec(t *testing.T) {
	f := newFakeSysfs(t)
	f.write("sys/dev/block/7:3/uevent", "MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n")
	f.write("sys/dev/block/7:4/uevent", "MAJOR=7\nMINOR=4\nDEVNAME=loop4\n")
	f.write("sys/dev/char/1:3/uevent", "MAJOR=1\nMINOR=3\nDEVNAME=null\n")
	f.write("sys/dev/char/10:196/uevent", "DEVNAME=vfio/vfio\n")
	f.write("sys/dev/char/243:0/uevent", "DEVNAME=vfio/12\n")
	f.blk["/dev/loop3"] = [2]int64{7, 3}
	f.blk["/dev/loop4"] = [2]int64{7, 4}
	f.pciFunction("12", "0000:01:00.1", "vfio-pci")
	f.pciFunction("12", "0000:01:00.0", "vfio-pci")
	host := fakeHost{Sysfs{Root: f.root}, f}

	spec := &specs.Spec{
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/data", Type: "bind", Source: "/dev/loop4", Options: []string{"rbind", "ro"}},
		},
		Linux: &specs.Linux{Devices: []specs.LinuxDevice{
			{Path: "/dev/xda", Type: "b", Major: 7, Minor: 3},
			{Path: "/dev/null", Type: "c", Major: 1, Minor: 3},
			{Path: "/dev/vfio/vfio", Type: "c", Major: 10, Minor: 196},
			{Path: "/dev/vfio/12", Type: "c", Major: 243, Minor: 0},
		}},
	}
	req, err := FromSpec(spec, host)
	if err != nil {
		t.Fatal(err)
	}
	want := Request{
		Blocks: []Block{
			{HostPath: "/dev/loop3", HostMajor: 7, HostMinor: 3, ContainerPath: "/dev/xda", MountIndex: -1},
			{HostPath: "/dev/loop4", HostMajor: 7, HostMinor: 4, MountIndex: 1, ReadOnly: true},
		},
		VFIO: []VFIOGroup{{Group: "12", ContainerPath: "/dev/vfio/12", HostMajor: 243, Functions: []PCIAddress{"0000:01:00.0", "0000:01:00.1"}}},
	}
	if fmt.Sprintf("%+v", req) != fmt.Sprintf("%+v", want) {
		t.Fatalf("FromSpec:\n got %+v\nwant %+v", req, want)
	}
}

// TestIOMMUGroupErrors: every broken host setup gets an error that says
// what to fix.
func TestIOMMUGroupErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(f *fakeSysfs)
		want  string
	}{
		{"no iommu", func(f *fakeSysfs) {}, "intel_iommu=on"},
		{"no group", func(f *fakeSysfs) { f.write("sys/kernel/iommu_groups/3/devices/0000:00:03.0/x", "") }, "no such file"},
		{"wrong driver", func(f *fakeSysfs) { f.pciFunction("12", "0000:01:00.0", "e1000e") }, "bound to driver e1000e, not vfio-pci"},
		{"no driver", func(f *fakeSysfs) { f.pciFunction("12", "0000:01:00.0", "") }, "bound to no driver"},
		{"missing pci dir", func(f *fakeSysfs) { f.write("sys/kernel/iommu_groups/12/devices/0000:01:00.0/x", "") }, "/sys/bus/pci/devices/0000:01:00.0 is missing"},
		{"bad name", func(f *fakeSysfs) { f.write("sys/kernel/iommu_groups/12/devices/garbage/x", "") }, "not a PCI address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSysfs(t)
			tc.setup(f)
			_, err := Sysfs{Root: f.root}.IOMMUGroup("12")
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("IOMMUGroup = %v, want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
	if _, err := (Sysfs{}).IOMMUGroup("../1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("path in group: %v", err)
	}
}

func TestUnionOrderAndVerify(t *testing.T) {
	req := Request{Blocks: blocks(2, ""), VFIO: []VFIOGroup{group("1", "0000:01:00.0"), group("2", "0000:02:00.0")}}
	cold := Devices{VFIO: []VFIOAttachment{{ID: "vfio0", Function: "0000:02:00.0", Plug: Cold}}}
	hot := Devices{
		Blocks: []BlockAttachment{{ID: "blk1", Block: req.Blocks[1]}, {ID: "blk0", Block: req.Blocks[0]}},
		VFIO:   []VFIOAttachment{{ID: "vfio1", Function: "0000:01:00.0", Plug: Hot}},
	}
	got := Union(req, cold, hot)
	if err := Verify(req, got); err != nil {
		t.Fatal(err)
	}
	if got.Blocks[0].ID != "blk0" || got.VFIO[0].ID != "vfio1" || got.VFIO[1].ID != "vfio0" {
		t.Errorf("Union not in spec order: %+v", got)
	}
	// Choosing one list instead of both, seed 002's bug, is caught.
	if err := Verify(req, cold); !errors.Is(err, ErrDropped) || !strings.Contains(err.Error(), "/dev/loop0") {
		t.Errorf("Verify(cold only) = %v", err)
	}
}
