package config

import (
	"fmt"
	"time"
)

// Memory configures elastic memory: a sandbox whose containers may use more
// than the VM has grows when the guest runs short and shrinks back when the
// memory is idle (docs/memory.md).
type Memory struct {
	// Elastic turns it on (default true). It takes effect with
	// virtio-mem only (hypervisor.memory_hotplug "auto" on q35, or
	// "virtio-mem"): DIMMs come and go whole and cannot follow a pod.
	Elastic bool `toml:"elastic"`
	// StepMiB is how much one grow adds.
	StepMiB int `toml:"step"`
	// HostReserveMiB is host MemAvailable that no grow may take.
	HostReserveMiB int `toml:"host_reserve"`
	// ShrinkDelay is how long memory must be idle, and how long after
	// the last change, before the VM shrinks.
	ShrinkDelay Duration `toml:"shrink_delay"`
}

// Defaults and bounds of [memory].
const (
	DefaultElasticStepMiB = 256
	DefaultHostReserveMiB = 1024
	DefaultShrinkDelay    = 10 * time.Second
	maxElasticStepMiB     = 64 << 10
	maxShrinkDelay        = 24 * time.Hour
	elasticStepAlignMiB   = 2 // virtio-mem's block
	maxHostReserveMiB     = 1 << 30
)

func defaultMemory() Memory {
	return Memory{Elastic: true, StepMiB: DefaultElasticStepMiB, HostReserveMiB: DefaultHostReserveMiB,
		ShrinkDelay: Duration{DefaultShrinkDelay}}
}

// ElasticMemory says whether sandboxes of this configuration grow and
// shrink on their own: memory.elastic, with a mechanism that can.
func (c *Config) ElasticMemory() bool {
	return c.Memory.Elastic && c.ResolvedMemoryHotplug() == MemoryHotplugVirtioMem &&
		c.Hypervisor.DefaultMaxMemoryMiB > c.Hypervisor.DefaultMemoryMiB
}

func (c *Config) validateMemory() []*KeyError {
	m := &c.Memory
	var errs []*KeyError
	switch {
	case m.StepMiB < elasticStepAlignMiB || m.StepMiB > maxElasticStepMiB:
		errs = append(errs, keyError("memory.step", m.StepMiB, "is out of range",
			fmt.Sprintf("the value is in MiB; use %d to %d (the default %d grows a small pod in one step)", elasticStepAlignMiB, maxElasticStepMiB, DefaultElasticStepMiB)))
	case m.StepMiB%elasticStepAlignMiB != 0:
		errs = append(errs, keyError("memory.step", m.StepMiB, "is not a multiple of 2",
			fmt.Sprintf("virtio-mem adds memory in 2 MiB blocks; use %d or %d", m.StepMiB-1, m.StepMiB+1)))
	}
	if m.HostReserveMiB < 0 || m.HostReserveMiB > maxHostReserveMiB {
		errs = append(errs, keyError("memory.host_reserve", m.HostReserveMiB, "is out of range",
			fmt.Sprintf("the value is in MiB of host MemAvailable that no grow may take; use 0 to %d", maxHostReserveMiB)))
	}
	if d := m.ShrinkDelay.Duration; d < time.Second || d > maxShrinkDelay {
		errs = append(errs, keyError("memory.shrink_delay", m.ShrinkDelay, "is out of range",
			fmt.Sprintf(`use a duration from "1s" to %q, such as the default %q`, maxShrinkDelay.String(), DefaultShrinkDelay.String())))
	}
	return errs
}
