// Package kernel holds the configuration of Berth's own guest kernel: a
// fragment per architecture, merged over the kernel's `make tinyconfig` by
// `berth guest build` when guest.kernel_source = "berth". The fragments are
// embedded so that the berth binary builds the kernel it was released with,
// and their hash is part of the build cache key.
package kernel

import (
	_ "embed"
	"fmt"
)

//go:embed berth-x86_64.config
var fragmentX86_64 []byte

// Fragment returns the config fragment for a Debian architecture name
// (amd64) and the file name it is kept under in the repository.
func Fragment(debArch string) (name string, data []byte, err error) {
	switch debArch {
	case "amd64":
		return "berth-x86_64.config", fragmentX86_64, nil
	}
	return "", nil, fmt.Errorf("Berth's own guest kernel has no configuration for %s (only amd64): set guest.kernel_source = \"debian\"", debArch)
}
