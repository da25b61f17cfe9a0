package config

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// AnnotationPrefix starts the pod annotations that override configuration
// keys: io.berth.config.hypervisor.default_memory = "512".
const AnnotationPrefix = "io.berth.config."

// annotationRule parses an annotation value into the configuration.
type annotationRule func(c *Config, value string) error

// annotatable is the allow-list of keys untrusted pod annotations may ever
// set, as gVisor's overrideAllowlist. Paths (QEMU, virtiofsd, kernel,
// initrd, state and run directories) and the kernel command line are
// absent on purpose: a pod must never choose what the host executes or
// what the guest boots. An operator further narrows the list with
// runtime.enable_annotations (empty by default). The resulting
// configuration is validated like a file, so the usual bounds hold.
var annotatable = map[string]annotationRule{
	"hypervisor.default_memory": func(c *Config, v string) error {
		n, err := wholeNumber(v, " of MiB")
		c.Hypervisor.DefaultMemoryMiB = n
		return err
	},
	"hypervisor.default_vcpus": func(c *Config, v string) error {
		n, err := wholeNumber(v, "")
		c.Hypervisor.DefaultVCPUs = n
		return err
	},
	// The ceiling elastic memory and hot-plug grow to: a pod may lower
	// it (use less of the host), never raise it.
	"hypervisor.default_maxmemory": func(c *Config, v string) error {
		n, err := wholeNumber(v, " of MiB")
		if err != nil {
			return err
		}
		if n > c.Hypervisor.DefaultMaxMemoryMiB {
			return fmt.Errorf("pods may only lower hypervisor.default_maxmemory, which is %d MiB on this node", c.Hypervisor.DefaultMaxMemoryMiB)
		}
		c.Hypervisor.DefaultMaxMemoryMiB = n
		return nil
	},
	"hypervisor.virtiofs_cache": func(c *Config, v string) error {
		c.Hypervisor.VirtiofsCache = v
		return nil
	},
	"hypervisor.virtiofs_xattr": func(c *Config, v string) error {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("must be true or false, not %q", v)
		}
		c.Hypervisor.VirtiofsXattr = on
		return nil
	},
}

// AnnotatableKeys lists the keys pods can be allowed to set.
func AnnotatableKeys() []string {
	keys := make([]string, 0, len(annotatable))
	for k := range annotatable {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// WithAnnotations returns a copy of c with the io.berth.config.*
// annotations of a pod applied. An annotation for a key that is not both
// annotatable and enabled in runtime.enable_annotations is an error, as is
// a value that makes the configuration invalid; c is never changed.
func (c *Config) WithAnnotations(annotations map[string]string) (*Config, error) {
	keys := make([]string, 0)
	for k := range annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return c, nil
	}
	sort.Strings(keys)
	out := *c
	out.Runtime.EnableAnnotations = slices.Clone(c.Runtime.EnableAnnotations)
	for _, ann := range keys {
		key := strings.TrimPrefix(ann, AnnotationPrefix)
		rule, ok := annotatable[key]
		if !ok {
			return nil, fmt.Errorf("annotation %s: %s cannot be set by pods; pods may only set %s: %w",
				ann, key, strings.Join(AnnotatableKeys(), ", "), ErrInvalid)
		}
		if !slices.Contains(c.Runtime.EnableAnnotations, key) {
			return nil, fmt.Errorf("annotation %s: not enabled on this node; an operator can allow it by adding %q to runtime.enable_annotations: %w",
				ann, key, ErrInvalid)
		}
		if err := rule(&out, annotations[ann]); err != nil {
			return nil, fmt.Errorf("annotation %s = %q: %v: %w", ann, annotations[ann], err, ErrInvalid)
		}
	}
	errs := out.problems()
	if out.host != nil {
		errs = append(errs, out.hostProblems(*out.host)...)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("pod annotations make the configuration invalid: %v: %w", joinErrors(errs), ErrInvalid)
	}
	return &out, nil
}
