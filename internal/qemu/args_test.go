package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func init() {
	// Args must not depend on the machine running the tests.
	hostTSCkHz = func() int { return 2596120 }
}

func baseMachine(t MachineType, a Accel) Machine {
	return Machine{
		Binary:     "/usr/bin/qemu-system-x86_64",
		Type:       t,
		Accel:      a,
		VCPUs:      2,
		MemoryMiB:  512,
		Kernel:     "/k/vmlinuz",
		ConsoleLog: "/run/berth/vm1/console.log",
		QMPSocket:  "/run/berth/vm1/qmp.sock",
	}
}

func TestArgsQ35Full(t *testing.T) {
	m := baseMachine(Q35, KVM)
	m.Initrd = "/k/initrd.img"
	m.KernelParams = "rdinit=/sbin/berth-agent"
	m.SerialPorts = []VirtioSerialPort{{ID: "agent", Name: "berth.agent", SocketPath: "/run/berth/vm1/agent.sock"}}
	m.FileSystems = []VhostUserFS{{ID: "fs0", Tag: "rootfs", SocketPath: "/run/berth/vm1/fs0.sock"}}
	m.Vsock = &VsockDevice{GuestCID: 42}
	m.Balloon = &BalloonDevice{FreePageReporting: true}

	got, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "q35,memory-backend=berth-ram",
		"-accel", "kvm", "-cpu", "host",
		"-smp", "2",
		"-m", "512M",
		"-object", "memory-backend-memfd,id=berth-ram,size=512M,share=on",
		"-kernel", "/k/vmlinuz",
		"-initrd", "/k/initrd.img",
		"-append", "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 lapic_timer_hz=1000000000 no_timer_check rdinit=/sbin/berth-agent",
		"-chardev", "file,id=berth-console,path=/run/berth/vm1/console.log",
		"-serial", "chardev:berth-console",
		"-chardev", "socket,id=berth-qmp,path=/run/berth/vm1/qmp.sock,server=on,wait=off",
		"-mon", "chardev=berth-qmp,mode=control",
		"-device", "virtio-serial-pci,id=berth-vser0",
		"-chardev", "socket,id=char-agent,path=/run/berth/vm1/agent.sock,server=on,wait=off",
		"-device", "virtserialport,id=agent,chardev=char-agent,bus=berth-vser0.0,name=berth.agent",
		"-chardev", "socket,id=char-fs0,path=/run/berth/vm1/fs0.sock",
		"-device", "vhost-user-fs-pci,id=fs0,chardev=char-fs0,tag=rootfs,queue-size=1024",
		"-device", "virtio-balloon-pci,id=berth-balloon,free-page-reporting=on",
		"-device", "vhost-vsock-pci,id=berth-vsock,guest-cid=42",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Args mismatch\n got: %q\nwant: %q", got, want)
	}
}

func TestArgsMicroVMFull(t *testing.T) {
	m := baseMachine(MicroVM, TCG)
	m.SerialPorts = []VirtioSerialPort{
		{ID: "agent", Name: "berth.agent", SocketPath: "/s/agent.sock"},
		{ID: "log", Name: "berth.log", SocketPath: "/s/log.sock"},
	}
	m.FileSystems = []VhostUserFS{{ID: "fs0", Tag: "rootfs", SocketPath: "/s/fs0.sock", QueueSize: 256}}
	m.Vsock = &VsockDevice{GuestCID: 3}
	m.Balloon = &BalloonDevice{}

	got, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "microvm,acpi=on,auto-kernel-cmdline=off,isa-serial=on,memory-backend=berth-ram",
		"-global", "virtio-mmio.force-legacy=false",
		"-accel", "tcg,thread=multi,tb-size=128", "-cpu", "max",
		"-smp", "2",
		"-m", "512M",
		"-object", "memory-backend-memfd,id=berth-ram,size=512M,share=on",
		"-kernel", "/k/vmlinuz",
		"-append", "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 tsc_early_khz=2596120 noreplace-smp lapic_timer_hz=1000000000 no_timer_check",
		"-chardev", "file,id=berth-console,path=/run/berth/vm1/console.log",
		"-serial", "chardev:berth-console",
		"-chardev", "socket,id=berth-qmp,path=/run/berth/vm1/qmp.sock,server=on,wait=off",
		"-mon", "chardev=berth-qmp,mode=control",
		"-device", "virtio-serial-device,id=berth-vser0",
		"-chardev", "socket,id=char-agent,path=/s/agent.sock,server=on,wait=off",
		"-device", "virtserialport,id=agent,chardev=char-agent,bus=berth-vser0.0,name=berth.agent",
		"-chardev", "socket,id=char-log,path=/s/log.sock,server=on,wait=off",
		"-device", "virtserialport,id=log,chardev=char-log,bus=berth-vser0.0,name=berth.log",
		"-chardev", "socket,id=char-fs0,path=/s/fs0.sock",
		"-device", "vhost-user-fs-device,id=fs0,chardev=char-fs0,tag=rootfs,queue-size=256",
		"-device", "virtio-balloon-device,id=berth-balloon",
		"-device", "vhost-vsock-device,id=berth-vsock,guest-cid=3",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Args mismatch\n got: %q\nwant: %q", got, want)
	}
}

// TestArgsParts checks the flags that matter, one concern per row.
func TestArgsParts(t *testing.T) {
	tests := []struct {
		name    string
		machine func() Machine
		want    [][]string // each must appear as consecutive arguments
		absent  []string   // must not appear as an argument
	}{
		{
			name:    "q35 kvm uses host cpu",
			machine: func() Machine { return baseMachine(Q35, KVM) },
			want:    [][]string{{"-machine", "q35"}, {"-accel", "kvm", "-cpu", "host"}},
			absent:  []string{"-global", "-object", "-initrd"},
		},
		{
			name:    "q35 tcg uses max cpu and multithreaded tcg",
			machine: func() Machine { return baseMachine(Q35, TCG) },
			want:    [][]string{{"-accel", "tcg,thread=multi,tb-size=128", "-cpu", "max"}},
		},
		{
			name:    "q35 tcg gives the TSC and APIC timer frequencies",
			machine: func() Machine { return baseMachine(Q35, TCG) },
			want:    [][]string{{"-append", "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 tsc_early_khz=2596120 noreplace-smp lapic_timer_hz=1000000000 no_timer_check"}},
		},
		{
			name:    "microvm kvm has no tsc_early_khz",
			machine: func() Machine { return baseMachine(MicroVM, KVM) },
			want: [][]string{
				{"-machine", "microvm,acpi=on,auto-kernel-cmdline=off,isa-serial=on"},
				{"-global", "virtio-mmio.force-legacy=false"},
				{"-append", "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 lapic_timer_hz=1000000000 no_timer_check"},
			},
		},
		{
			name:    "q35 boots the firmware it is given",
			machine: func() Machine { m := baseMachine(Q35, TCG); m.BIOS = QBootROM; return m },
			want:    [][]string{{"-bios", "qboot.rom"}},
		},
		{
			name:    "no firmware is QEMU's default",
			machine: func() Machine { return baseMachine(Q35, TCG) },
			absent:  []string{"-bios"},
		},
		{
			name:    "no file systems means private memory",
			machine: func() Machine { return baseMachine(MicroVM, TCG) },
			want:    [][]string{{"-m", "512M", "-kernel"}},
			absent:  []string{"-object"},
		},
		{
			name:    "no console log still has a serial port",
			machine: func() Machine { m := baseMachine(Q35, TCG); m.ConsoleLog = ""; return m },
			want:    [][]string{{"-serial", "null"}},
		},
		{
			name:    "sandbox denies obsolete calls, privileges, spawn and resource control",
			machine: func() Machine { m := baseMachine(Q35, TCG); m.Sandbox = true; return m },
			want:    [][]string{{"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}},
		},
		{
			name: "fw_cfg files",
			machine: func() Machine {
				m := baseMachine(Q35, TCG)
				m.FwCfgFiles = []FwCfgFile{{"opt/berth/secret", "/run/s/secret"}}
				return m
			},
			want: [][]string{{"-fw_cfg", "name=opt/berth/secret,file=/run/s/secret"}},
		},
		{
			name:    "no sandbox unless asked",
			machine: func() Machine { return baseMachine(Q35, TCG) },
			absent:  []string{"-sandbox"},
		},
		{
			name:    "capped console goes through an fd set",
			machine: func() Machine { m := baseMachine(Q35, TCG); m.ConsoleLogMaxBytes = 1 << 20; return m },
			want: [][]string{
				{"-add-fd", "fd=3,set=1"},
				{"-chardev", "file,id=berth-console,path=/dev/fdset/1,append=on", "-serial", "chardev:berth-console"},
			},
		},
		{
			name: "commas in paths and names are escaped",
			machine: func() Machine {
				m := baseMachine(Q35, TCG)
				m.QMPSocket = "/run/a,b/qmp.sock"
				m.SerialPorts = []VirtioSerialPort{{ID: "p", Name: "x,y", SocketPath: "/s/p"}}
				return m
			},
			want: [][]string{
				{"-chardev", "socket,id=berth-qmp,path=/run/a,,b/qmp.sock,server=on,wait=off"},
				{"-device", "virtserialport,id=p,chardev=char-p,bus=berth-vser0.0,name=x,,y"},
			},
		},
		{
			name: "free page reporting adds a balloon that never inflates",
			machine: func() Machine {
				m := baseMachine(Q35, TCG)
				m.Balloon = &BalloonDevice{FreePageReporting: true}
				return m
			},
			want: [][]string{{"-device", "virtio-balloon-pci,id=berth-balloon,free-page-reporting=on"}},
		},
		{
			name:    "kernel params go last",
			machine: func() Machine { m := baseMachine(Q35, TCG); m.KernelParams = "  loglevel=7 quiet "; return m },
			want:    [][]string{{"-append", "console=ttyS0 panic=-1 reboot=t loglevel=6 pty.legacy_count=0 tsc_early_khz=2596120 noreplace-smp lapic_timer_hz=1000000000 no_timer_check loglevel=7 quiet"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.machine().Args()
			if err != nil {
				t.Fatal(err)
			}
			for _, seq := range tt.want {
				if !containsSeq(got, seq) {
					t.Errorf("missing %q in\n%q", seq, got)
				}
			}
			for _, a := range tt.absent {
				if slices.Contains(got, a) {
					t.Errorf("unexpected %q in\n%q", a, got)
				}
			}
		})
	}
}

func containsSeq(args, seq []string) bool {
	for i := 0; i+len(seq) <= len(args); i++ {
		if slices.Equal(args[i:i+len(seq)], seq) {
			return true
		}
	}
	return false
}

func TestArgsDeterministic(t *testing.T) {
	m := baseMachine(MicroVM, TCG)
	for i := 0; i < 5; i++ {
		m.SerialPorts = append(m.SerialPorts, VirtioSerialPort{ID: "p" + string(rune('a'+i)), Name: "n" + string(rune('a'+i)), SocketPath: "/s"})
	}
	first, _ := m.Args()
	for i := 0; i < 20; i++ {
		if again, _ := m.Args(); !slices.Equal(first, again) {
			t.Fatalf("Args changed between calls:\n%q\n%q", first, again)
		}
	}
}

func TestArgsRejectsInvalid(t *testing.T) {
	m := baseMachine(Q35, TCG)
	m.VCPUs = 0
	if _, err := m.Args(); !errors.Is(err, ErrInvalidMachine) {
		t.Fatalf("Args on an invalid machine: %v", err)
	}
}

func TestValidate(t *testing.T) {
	long := "/" + strings.Repeat("x", 120)
	tests := []struct {
		name   string
		mutate func(*Machine)
		want   string // substring of the error; names the field
	}{
		{"no binary", func(m *Machine) { m.Binary = "" }, "Binary: empty"},
		{"bad type", func(m *Machine) { m.Type = "pc" }, `Type: "pc" is not a supported machine type`},
		{"no type", func(m *Machine) { m.Type = "" }, "Type:"},
		{"bad accel", func(m *Machine) { m.Accel = "hvf" }, `Accel: "hvf"`},
		{"no vcpus", func(m *Machine) { m.VCPUs = 0 }, "VCPUs: must be at least 1, got 0"},
		{"tiny memory", func(m *Machine) { m.MemoryMiB = 64 }, "MemoryMiB: must be at least 128, got 64"},
		{"no kernel", func(m *Machine) { m.Kernel = "" }, "Kernel: empty"},
		{"newline in params", func(m *Machine) { m.KernelParams = "a\nb" }, "KernelParams: contains a newline"},
		{"huge params", func(m *Machine) { m.KernelParams = strings.Repeat("x", 2100) }, "KernelParams: the kernel command line would be"},
		{"bios on microvm", func(m *Machine) { m.Type = MicroVM; m.BIOS = QBootROM }, "BIOS: only machine q35 takes a -bios firmware"},
		{"no qmp", func(m *Machine) { m.QMPSocket = "" }, "QMPSocket: empty"},
		{"long qmp path", func(m *Machine) { m.QMPSocket = long }, "QMPSocket: path is 121 bytes; unix socket paths are limited to 107"},
		{"port without id", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{Name: "a", SocketPath: "/s"}}
		}, "SerialPorts[0].ID: empty ID"},
		{"port id with bad char", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{ID: "a,b", Name: "a", SocketPath: "/s"}}
		}, `SerialPorts[0].ID: ID "a,b" may only contain`},
		{"port id starting with digit", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{ID: "0a", Name: "a", SocketPath: "/s"}}
		}, "must start with a letter"},
		{"reserved id", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{ID: "berth-qmp", Name: "a", SocketPath: "/s"}}
		}, "Berth reserves"},
		{"port without name", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{ID: "a", SocketPath: "/s"}}
		}, "SerialPorts[0].Name: empty"},
		{"duplicate port name", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{ID: "a", Name: "n", SocketPath: "/s"}, {ID: "b", Name: "n", SocketPath: "/t"}}
		}, `SerialPorts[1].Name: "n" is also the name of SerialPorts[0]`},
		{"port without socket", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{ID: "a", Name: "n"}}
		}, "SerialPorts[0].SocketPath: empty"},
		{"too many ports", func(m *Machine) {
			for i := 0; i < 31; i++ {
				m.SerialPorts = append(m.SerialPorts, VirtioSerialPort{ID: "p" + strings.Repeat("x", i), Name: strings.Repeat("n", i+1), SocketPath: "/s"})
			}
		}, "SerialPorts: 31 ports; at most 30"},
		{"id shared by port and fs", func(m *Machine) {
			m.SerialPorts = []VirtioSerialPort{{ID: "dev", Name: "n", SocketPath: "/s"}}
			m.FileSystems = []VhostUserFS{{ID: "dev", Tag: "t", SocketPath: "/f"}}
		}, `FileSystems[0].ID: ID "dev" is already used by SerialPorts[0].ID`},
		{"fs without tag", func(m *Machine) {
			m.FileSystems = []VhostUserFS{{ID: "f", SocketPath: "/f"}}
		}, "FileSystems[0].Tag: empty"},
		{"fs tag too long", func(m *Machine) {
			m.FileSystems = []VhostUserFS{{ID: "f", Tag: strings.Repeat("t", 37), SocketPath: "/f"}}
		}, "virtio-fs tags are at most 36"},
		{"duplicate fs tag", func(m *Machine) {
			m.FileSystems = []VhostUserFS{{ID: "f", Tag: "t", SocketPath: "/f"}, {ID: "g", Tag: "t", SocketPath: "/g"}}
		}, `FileSystems[1].Tag: "t" is also the tag of FileSystems[0]`},
		{"fs queue not power of two", func(m *Machine) {
			m.FileSystems = []VhostUserFS{{ID: "f", Tag: "t", SocketPath: "/f", QueueSize: 1000}}
		}, "FileSystems[0].QueueSize: 1000 is not a power of two"},
		{"fs queue too big", func(m *Machine) {
			m.FileSystems = []VhostUserFS{{ID: "f", Tag: "t", SocketPath: "/f", QueueSize: 2048}}
		}, "FileSystems[0].QueueSize: 2048"},
		{"fs socket too long", func(m *Machine) {
			m.FileSystems = []VhostUserFS{{ID: "f", Tag: "t", SocketPath: long}}
		}, "FileSystems[0].SocketPath: path is 121 bytes"},
		{"vsock host cid", func(m *Machine) { m.Vsock = &VsockDevice{GuestCID: 2} }, "Vsock.GuestCID: 2 is reserved"},
		{"vsock any cid", func(m *Machine) { m.Vsock = &VsockDevice{GuestCID: ^uint32(0)} }, "Vsock.GuestCID: 4294967295 is reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := baseMachine(Q35, TCG)
			tt.mutate(&m)
			err := m.Validate()
			if err == nil {
				t.Fatal("Validate accepted an invalid machine")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalidMachine) {
				t.Errorf("error does not wrap ErrInvalidMachine")
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error is not a *FieldError")
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	err := Machine{}.Validate()
	for _, field := range []string{"Binary", "Type", "Accel", "VCPUs", "MemoryMiB", "Kernel", "QMPSocket"} {
		if !strings.Contains(err.Error(), field+":") {
			t.Errorf("zero Machine: error does not name %s:\n%v", field, err)
		}
	}
}

func TestValidateAcceptsGoodMachines(t *testing.T) {
	for _, typ := range []MachineType{Q35, MicroVM} {
		for _, acc := range []Accel{KVM, TCG} {
			m := baseMachine(typ, acc)
			m.SerialPorts = []VirtioSerialPort{{ID: "agent", Name: "berth.agent", SocketPath: "/s/a"}}
			m.FileSystems = []VhostUserFS{{ID: "fs0", Tag: strings.Repeat("t", 36), SocketPath: "/s/f", QueueSize: 1024}}
			m.Vsock = &VsockDevice{GuestCID: 3}
			if err := m.Validate(); err != nil {
				t.Errorf("%s/%s: %v", typ, acc, err)
			}
		}
	}
}

func TestReadHostTSCkHz(t *testing.T) {
	if khz := readHostTSCkHz(); khz < 100_000 || khz > 10_000_000 {
		t.Errorf("host TSC %d kHz is implausible", khz)
	}
}

func TestLastLines(t *testing.T) {
	in := "a\n\nb\r\n  c  \nd\n"
	if got := lastLines(in, 2, 100); got != "c; d" {
		t.Errorf("lastLines = %q", got)
	}
	if got := lastLines(strings.Repeat("x", 50), 8, 10); got != "..."+strings.Repeat("x", 10) {
		t.Errorf("lastLines = %q", got)
	}
}

func TestArgsRootImageBootsFromReadOnlyPmem(t *testing.T) {
	img := filepath.Join(t.TempDir(), "root.erofs")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m := baseMachine(Q35, TCG)
	m.RootImage = img
	m.MaxMemoryMiB, m.MemorySlots = 16384, 0
	m.VirtioMem = &VirtioMemDevice{ID: "vmem0", RegionMiB: 15872, BlockMiB: 2}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(got, " ")
	for _, want := range []string{
		// The image's 4 MiB on top of the hot-plug ceiling.
		"-m 512M,slots=0,maxmem=16388M",
		"-object memory-backend-file,id=berth-root-mem,mem-path=" + img + ",size=4M,share=off,readonly=on",
		"-device virtio-pmem-pci,id=berth-root,memdev=berth-root-mem",
		RootImageParams,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	if slices.Contains(got, "-initrd") {
		t.Errorf("a root image boot also loads an initramfs: %s", joined)
	}
	// After virtio-mem, which keeps its place in the device-memory region.
	if strings.Index(joined, "virtio-pmem-pci") < strings.Index(joined, "virtio-mem-pci") {
		t.Errorf("virtio-pmem comes before virtio-mem: %s", joined)
	}

	// Without hot-plug room the ceiling is the boot memory plus the image.
	m.MaxMemoryMiB, m.VirtioMem = 0, nil
	if got, err = m.Args(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(got, " "), "-m 512M,slots=0,maxmem=516M") {
		t.Errorf("args: %s", strings.Join(got, " "))
	}
}

func TestArgsRefuseRootImageOfUnalignedSize(t *testing.T) {
	img := filepath.Join(t.TempDir(), "root.erofs")
	if err := os.WriteFile(img, make([]byte, 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	m := baseMachine(Q35, TCG)
	m.RootImage = img
	_, err := m.Args()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "RootImage" || !strings.Contains(err.Error(), "berth guest build") {
		t.Fatalf("Args with a 3 MiB root image: %v, want a RootImage error naming the fix", err)
	}
}

func TestValidateRootImageOnlyOnQ35WithoutInitrd(t *testing.T) {
	m := baseMachine(MicroVM, TCG)
	m.RootImage, m.Initrd = "/r", "/i"
	err := m.Validate()
	for _, field := range []string{"RootImage", "Initrd"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate(microvm with a root image and an initrd) = %v, want a %s error", err, field)
		}
	}
}
