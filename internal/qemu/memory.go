package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/berth-runtime/berth/internal/qemu/qmp"
)

// This file is the QEMU side of memory hot-plug: virtio-mem's requested
// size, and ACPI DIMMs (pc-dimm). It only speaks QMP; deciding how much
// memory a sandbox gets, and onlining it in the guest, live elsewhere.

const mib = 1 << 20

// SetVirtioMemRequested asks the guest driver of virtio-mem device id to
// plug (or unplug) memory until the device provides sizeMiB. It returns
// once QEMU accepted the request; the guest follows asynchronously and
// QEMU reports progress with MEMORY_DEVICE_SIZE_CHANGE events.
func (v *VM) SetVirtioMemRequested(ctx context.Context, id string, sizeMiB int) error {
	args := map[string]any{"path": "/machine/peripheral/" + id, "property": "requested-size", "value": uint64(sizeMiB) * mib}
	if err := v.QMP().Execute(ctx, "qom-set", args, nil); err != nil {
		return fmt.Errorf("virtio-mem %s: set requested-size %d MiB: %w", id, sizeMiB, err)
	}
	return nil
}

// VirtioMemSizeMiB reads how much memory the guest has plugged into
// virtio-mem device id.
func (v *VM) VirtioMemSizeMiB(ctx context.Context, id string) (int, error) {
	var size uint64
	args := map[string]any{"path": "/machine/peripheral/" + id, "property": "size"}
	if err := v.QMP().Execute(ctx, "qom-get", args, &size); err != nil {
		return 0, fmt.Errorf("virtio-mem %s: read size: %w", id, err)
	}
	return int(size / mib), nil
}

// ResizeVirtioMem sets the requested size of virtio-mem device id and
// waits for the guest driver: until the plugged size equals the request,
// or until it has not changed for settle (the guest cannot go further,
// e.g. memory in use blocks a shrink), or until ctx is done. It returns
// the size reached; once the request is set, a done ctx only ends the
// wait early (the size it returns is still true), so a caller that gave
// up can settle the device where the guest got to.
//
// It polls the device's size rather than waiting for
// MEMORY_DEVICE_SIZE_CHANGE alone: QEMU rate-limits that event to one per
// second per device, which would add up to a second to every resize
// (measured: +1 GiB took 1.0 s with events only, 0.24 s is the floor).
// The events still wake the loop early.
func (v *VM) ResizeVirtioMem(ctx context.Context, id string, sizeMiB int, settle time.Duration) (int, error) {
	sub := v.WatchVirtioMemSize(id)
	defer sub.Cancel()
	if err := v.SetVirtioMemRequested(ctx, id, sizeMiB); err != nil {
		return 0, err
	}
	size, err := v.VirtioMemSizeMiB(ctx, id)
	if err != nil {
		return 0, err
	}
	lastChange := time.Now()
	for size != sizeMiB {
		if time.Since(lastChange) > settle {
			break // no progress within settle: the guest stopped here
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		sub.Wait(wctx)
		cancel()
		if ctx.Err() != nil {
			break // the caller stopped waiting: report where the guest is
		}
		n, err := v.VirtioMemSizeMiB(ctx, id)
		if err != nil {
			return size, err
		}
		if n != size {
			size, lastChange = n, time.Now()
		}
	}
	return size, nil
}

// WatchVirtioMemSize subscribes to the device's size changes. Subscribe
// before SetVirtioMemRequested so no event is missed; Cancel when done.
func (v *VM) WatchVirtioMemSize(id string) *qmp.Subscription {
	return v.QMP().Subscribe("MEMORY_DEVICE_SIZE_CHANGE", func(e qmp.Event) bool {
		var d struct {
			ID string `json:"id"`
		}
		return json.Unmarshal(e.Data, &d) == nil && d.ID == id
	})
}

// SizeFromEvent decodes the new size, in MiB, of a MEMORY_DEVICE_SIZE_CHANGE.
func SizeFromEvent(e qmp.Event) (int, error) {
	var d struct {
		Size uint64 `json:"size"`
	}
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return 0, err
	}
	return int(d.Size / mib), nil
}

// DIMM is one ACPI memory module.
type DIMM struct {
	ID      string
	SizeMiB int
}

// PlugDIMM adds a memory backend and a pc-dimm using it. If the device
// cannot be added, the backend is removed again, so a failure changes
// nothing.
func (v *VM) PlugDIMM(ctx context.Context, d DIMM) error {
	if err := checkQEMUID(d.ID); err != nil {
		return err
	}
	backend := d.ID + "-mem"
	obj := map[string]any{"qom-type": "memory-backend-ram", "id": backend, "size": uint64(d.SizeMiB) * mib}
	if v.machine.sharedMemory() {
		obj["qom-type"] = "memory-backend-memfd"
		obj["share"] = true
	}
	if err := v.QMP().Execute(ctx, "object-add", obj, nil); err != nil {
		return fmt.Errorf("dimm %s: add %d MiB backend: %w", d.ID, d.SizeMiB, err)
	}
	if err := v.QMP().Execute(ctx, "device_add", map[string]any{"driver": "pc-dimm", "id": d.ID, "memdev": backend}, nil); err != nil {
		v.QMP().Execute(context.WithoutCancel(ctx), "object-del", map[string]any{"id": backend}, nil)
		return fmt.Errorf("dimm %s: add device: %w", d.ID, err)
	}
	return nil
}

// UnplugDIMM asks the guest to eject a DIMM and waits until it has (the
// guest must first offline its memory, which only works for memory onlined
// movable), then frees the backend.
func (v *VM) UnplugDIMM(ctx context.Context, id string) error {
	sub := v.QMP().Subscribe("DEVICE_DELETED", func(e qmp.Event) bool {
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(e.Data, &d) == nil && d.Device == id
	})
	defer sub.Cancel()
	if err := v.QMP().Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		return fmt.Errorf("dimm %s: remove: %w", id, err)
	}
	if _, err := sub.Wait(ctx); err != nil {
		return fmt.Errorf("dimm %s: the guest did not release it: %w", id, err)
	}
	if err := v.QMP().Execute(ctx, "object-del", map[string]any{"id": id + "-mem"}, nil); err != nil {
		return fmt.Errorf("dimm %s: free backend: %w", id, err)
	}
	return nil
}

// MemoryDeviceRange returns the guest physical address and size of the
// memory device (DIMM) id, from query-memory-devices.
func (v *VM) MemoryDeviceRange(ctx context.Context, id string) (addr, size uint64, err error) {
	var devs []struct {
		Type string `json:"type"`
		Data struct {
			ID   string `json:"id"`
			Addr uint64 `json:"addr"`
			Size uint64 `json:"size"`
		} `json:"data"`
	}
	if err := v.QMP().Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		return 0, 0, fmt.Errorf("query memory devices: %w", err)
	}
	for _, d := range devs {
		if d.Data.ID == id {
			return d.Data.Addr, d.Data.Size, nil
		}
	}
	return 0, 0, fmt.Errorf("memory device %s not found", id)
}
