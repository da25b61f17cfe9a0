package qemu

import (
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestArgsNetDevices(t *testing.T) {
	tap0, tap1 := os.NewFile(100, "tap0"), os.NewFile(101, "tap1")
	mac0, _ := net.ParseMAC("0a:58:0a:58:00:05")
	mac1, _ := net.ParseMAC("0a:58:0a:59:00:06")
	for _, tc := range []struct {
		machine MachineType
		want    []string
	}{
		{Q35, []string{
			"-netdev", "tap,id=char-net0,fd=3",
			"-device", "virtio-net-pci,id=net0,netdev=char-net0,mac=0a:58:0a:58:00:05,host_mtu=1450",
			"-netdev", "tap,id=char-net1,fd=4",
			"-device", "virtio-net-pci,id=net1,netdev=char-net1,mac=0a:58:0a:59:00:06",
		}},
		{MicroVM, []string{
			"-netdev", "tap,id=char-net0,fd=3",
			"-device", "virtio-net-device,id=net0,netdev=char-net0,mac=0a:58:0a:58:00:05,host_mtu=1450",
			"-netdev", "tap,id=char-net1,fd=4",
			"-device", "virtio-net-device,id=net1,netdev=char-net1,mac=0a:58:0a:59:00:06",
		}},
	} {
		m := baseMachine(tc.machine, TCG)
		m.NetDevices = []NetDevice{{ID: "net0", Tap: tap0, MAC: mac0, MTU: 1450}, {ID: "net1", Tap: tap1, MAC: mac1}}
		got, err := m.Args()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.Index(got, "-netdev")
		if i < 0 || !slices.Equal(got[i:i+len(tc.want)], tc.want) {
			t.Errorf("%s: net args\n got %q\nwant %q", tc.machine, got, tc.want)
		}
		// ExtraFiles[i] is fd 3+i in QEMU: the order must match.
		if files := m.extraFiles(); len(files) != 2 || files[0] != tap0 || files[1] != tap1 {
			t.Errorf("%s: extra files %v", tc.machine, files)
		}
	}
}

func TestValidateNetDevices(t *testing.T) {
	mac, _ := net.ParseMAC("0a:58:0a:58:00:05")
	multicast, _ := net.ParseMAC("01:00:5e:00:00:01")
	tap := os.NewFile(100, "tap")
	for _, tc := range []struct {
		name  string
		nic   NetDevice
		field string
	}{
		{"no tap", NetDevice{ID: "net0", MAC: mac}, "NetDevices[0].Tap"},
		{"no mac", NetDevice{ID: "net0", Tap: tap}, "NetDevices[0].MAC"},
		{"multicast mac", NetDevice{ID: "net0", Tap: tap, MAC: multicast}, "NetDevices[0].MAC"},
		{"mtu", NetDevice{ID: "net0", Tap: tap, MAC: mac, MTU: 70000}, "NetDevices[0].MTU"},
		{"reserved id", NetDevice{ID: "berth-net", Tap: tap, MAC: mac}, "NetDevices[0].ID"},
	} {
		m := baseMachine(Q35, TCG)
		m.NetDevices = []NetDevice{tc.nic}
		err := m.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v, want an error naming %s", tc.name, err, tc.field)
		}
	}
}

// With a capped console its pipe is QEMU's fd 3, and the taps follow: a
// tap numbered 3 would hand QEMU the console pipe as its network.
func TestTapsFollowTheConsolePipe(t *testing.T) {
	mac, _ := net.ParseMAC("0a:58:0a:58:00:05")
	m := baseMachine(Q35, TCG)
	m.ConsoleLog, m.ConsoleLogMaxBytes = "/run/x/console.log", 1<<20
	m.NetDevices = []NetDevice{{ID: "net0", Tap: os.NewFile(100, "tap0"), MAC: mac}}
	got, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join(got, " ")
	if !strings.Contains(s, "-add-fd fd=3,") || !strings.Contains(s, "-netdev tap,id=char-net0,fd=4") {
		t.Errorf("console and tap descriptors collide: %s", s)
	}
}
