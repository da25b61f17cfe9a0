package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/qemu/qmp"
)

// DefaultUnplugTimeout bounds the wait for DEVICE_DELETED when the caller's
// context has no deadline. Removal needs the guest's cooperation (ACPI
// eject); a TCG guest on a busy host takes a second or more, a guest that
// ignores the request never answers.
const DefaultUnplugTimeout = 20 * time.Second

// ErrUnplugTimeout is wrapped when the guest did not release a device in
// time. The device may still be in use by the guest: its port must not be
// reused.
var ErrUnplugTimeout = errors.New("guest did not release the device")

// qmpBlockdevFile is the protocol layer of a blockdev-add.
type qmpBlockdevFile struct {
	Driver   string `json:"driver"` // host_device or file
	Filename string `json:"filename"`
}

// qmpBlockdevAdd is blockdev-add's argument for a raw image.
type qmpBlockdevAdd struct {
	Driver   string          `json:"driver"` // raw
	NodeName string          `json:"node-name"`
	ReadOnly bool            `json:"read-only"`
	File     qmpBlockdevFile `json:"file"`
}

// qmpDeviceAdd is device_add's argument for the devices Berth plugs.
type qmpDeviceAdd struct {
	Driver string `json:"driver"`
	ID     string `json:"id"`
	Bus    string `json:"bus"`
	Addr   string `json:"addr"`
	Drive  string `json:"drive,omitempty"` // virtio-blk-pci
	Host   string `json:"host,omitempty"`  // vfio-pci
}

type qmpDeviceID struct {
	ID string `json:"id"`
}

type qmpNodeName struct {
	NodeName string `json:"node-name"`
}

func (d BlockDevice) validate() error {
	var errs []error
	if err := checkQEMUID(d.ID); err != nil {
		errs = append(errs, err)
	}
	if d.Path == "" {
		errs = append(errs, errors.New("empty Path"))
	}
	if d.Bus == "" {
		errs = append(errs, errors.New("empty Bus: disks are plugged into a port reserved at boot"))
	}
	if d.Addr < 0 || d.Addr > 31 {
		errs = append(errs, fmt.Errorf("Addr %d is outside 0-31", d.Addr))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("block device %q: %w: %w", d.ID, ErrInvalidMachine, err)
	}
	return nil
}

// HotplugBlock adds a virtio-blk disk: blockdev-add opens Path (as a host
// block device if it is one, else as a file), then device_add puts the
// disk in its port. If device_add fails, the block node is deleted again,
// so a failed hot-plug leaves QEMU holding nothing.
func (v *VM) HotplugBlock(ctx context.Context, d BlockDevice) error {
	if err := d.validate(); err != nil {
		return err
	}
	c, err := v.qmpClient()
	if err != nil {
		return err
	}
	// The host opens the disk and hands QEMU the descriptor (add-fd):
	// QEMU may run as an unprivileged user that cannot open host disks
	// (hypervisor.run_as_root), and what QEMU gets is exactly the file
	// the host checked, not whatever the path names a moment later.
	f, err := openBlock(d)
	if err != nil {
		return err
	}
	proto := "file"
	if st, err := f.Stat(); err != nil {
		f.Close()
		return fmt.Errorf("block device %q: %w", d.ID, err)
	} else if st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		proto = "host_device"
	}
	set, err := v.addFd(ctx, c, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("hot-plug disk %q (%s): %w", d.ID, d.Path, err)
	}
	add := qmpBlockdevAdd{Driver: "raw", NodeName: d.nodeName(), ReadOnly: d.ReadOnly, File: qmpBlockdevFile{Driver: proto, Filename: "/dev/fdset/" + strconv.Itoa(set)}}
	if err := c.Execute(ctx, "blockdev-add", add, nil); err != nil {
		v.removeFd(context.WithoutCancel(ctx), c, set)
		return fmt.Errorf("hot-plug disk %q (%s): %w", d.ID, d.Path, err)
	}
	dev := qmpDeviceAdd{Driver: "virtio-blk-pci", ID: d.ID, Bus: d.Bus, Addr: hexSlot(d.Addr), Drive: d.nodeName()}
	if err := c.Execute(ctx, "device_add", dev, nil); err != nil {
		// The reply may have been lost to a cancelled ctx while QEMU
		// added the device: remove both, ignoring "not found".
		bg := context.WithoutCancel(ctx)
		var qe *qmp.Error
		if !errors.As(err, &qe) {
			v.unplug(bg, c, d.ID)
		}
		if derr := c.Execute(bg, "blockdev-del", qmpNodeName{d.nodeName()}, nil); derr != nil {
			err = errors.Join(err, fmt.Errorf("rolling back blockdev-add: %w", derr))
		}
		v.removeFd(bg, c, set)
		return fmt.Errorf("hot-plug disk %q into %s: %w", d.ID, d.Bus, err)
	}
	v.mu.Lock()
	if v.blockFdSets == nil {
		v.blockFdSets = map[string]int{}
	}
	v.blockFdSets[d.ID] = set
	v.mu.Unlock()
	return nil
}

// openBlock opens a disk for QEMU with the access it will use.
func openBlock(d BlockDevice) (*os.File, error) {
	flags := os.O_RDWR
	if d.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(d.Path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("block device %q: %w", d.ID, err)
	}
	return f, nil
}

// firstBlockFdSet is the first fd set id used for disks (set 1 is the
// console's).
const firstBlockFdSet = 16

// addFd passes f to QEMU into a new fd set and returns the set's id.
func (v *VM) addFd(ctx context.Context, c *qmp.Client, f *os.File) (int, error) {
	v.mu.Lock()
	if v.nextFdSet < firstBlockFdSet {
		v.nextFdSet = firstBlockFdSet
	}
	set := v.nextFdSet
	v.nextFdSet++
	v.mu.Unlock()
	var ret struct {
		FdsetID int `json:"fdset-id"`
	}
	if err := c.ExecuteWithFile(ctx, "add-fd", map[string]int{"fdset-id": set}, &ret, f); err != nil {
		return 0, err
	}
	return ret.FdsetID, nil
}

// removeFd drops QEMU's fd set; QEMU closes the descriptor once no block
// node uses it any more.
func (v *VM) removeFd(ctx context.Context, c *qmp.Client, set int) error {
	return c.Execute(ctx, "remove-fd", map[string]int{"fdset-id": set}, nil)
}

// UnplugBlock removes a disk added by HotplugBlock: device_del, wait for
// DEVICE_DELETED (the guest has let go), then blockdev-del, which closes
// the host file.
func (v *VM) UnplugBlock(ctx context.Context, d BlockDevice) error {
	c, err := v.qmpClient()
	if err != nil {
		return err
	}
	if err := v.unplug(ctx, c, d.ID); err != nil {
		return err
	}
	if err := c.Execute(ctx, "blockdev-del", qmpNodeName{d.nodeName()}, nil); err != nil {
		return fmt.Errorf("release disk %q: %w", d.ID, err)
	}
	v.mu.Lock()
	set, ok := v.blockFdSets[d.ID]
	delete(v.blockFdSets, d.ID)
	v.mu.Unlock()
	if ok {
		if err := v.removeFd(ctx, c, set); err != nil {
			return fmt.Errorf("release disk %q: %w", d.ID, err)
		}
	}
	return nil
}

// HotplugVFIO passes a host PCI function through into a port.
func (v *VM) HotplugVFIO(ctx context.Context, d VFIODevice) error {
	if err := checkQEMUID(d.ID); err != nil {
		return fmt.Errorf("VFIO device: %w: %w", ErrInvalidMachine, err)
	}
	if !hostPCIRE.MatchString(d.Host) {
		return fmt.Errorf("VFIO device %q: host %q is not a PCI address: %w", d.ID, d.Host, ErrInvalidMachine)
	}
	c, err := v.qmpClient()
	if err != nil {
		return err
	}
	dev := qmpDeviceAdd{Driver: "vfio-pci", ID: d.ID, Bus: d.Bus, Addr: hexSlot(d.Addr), Host: d.Host}
	if err := c.Execute(ctx, "device_add", dev, nil); err != nil {
		return fmt.Errorf("hot-plug VFIO %s into %s: %w", d.Host, d.Bus, err)
	}
	return nil
}

// UnplugDevice removes a device by ID and waits for DEVICE_DELETED.
func (v *VM) UnplugDevice(ctx context.Context, id string) error {
	c, err := v.qmpClient()
	if err != nil {
		return err
	}
	return v.unplug(ctx, c, id)
}

// unplug sends device_del and waits for the device's DEVICE_DELETED. The
// subscription is made before device_del: QEMU may send the event before
// its reply. A device QEMU does not know is already gone.
func (v *VM) unplug(ctx context.Context, c *qmp.Client, id string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultUnplugTimeout)
		defer cancel()
	}
	sub := c.Subscribe("DEVICE_DELETED", func(ev qmp.Event) bool {
		var data struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(ev.Data, &data) == nil && data.Device == id
	})
	defer sub.Cancel()
	if err := c.Execute(ctx, "device_del", qmpDeviceID{id}, nil); err != nil {
		if isQMPClass(err, "DeviceNotFound") {
			return nil
		}
		return fmt.Errorf("unplug %q: %w", id, err)
	}
	if _, err := sub.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("unplug %q: %w (waited for DEVICE_DELETED): %w", id, ErrUnplugTimeout, err)
		}
		return fmt.Errorf("unplug %q: %w", id, err)
	}
	return nil
}

func (v *VM) qmpClient() (*qmp.Client, error) {
	c := v.QMP()
	if c == nil {
		return nil, fmt.Errorf("qemu (pid %d): %w", v.pid, qmp.ErrClosed)
	}
	return c, nil
}

func isQMPClass(err error, class string) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && qe.Class == class
}
