package oci

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// MaxIDLength is the longest container, sandbox or exec id Berth accepts.
// It is containerd's own limit (identifiers.Validate), so every id
// containerd hands over passes; CRI's ids are 64 hex digits.
const MaxIDLength = 76

// ValidateID checks an id before anything builds a host path, a socket
// name or a guest path from it. kind names the id in the error ("sandbox
// id", "container id", "exec id"). Ids come from containerd's API, from
// the CLI, and from pod annotations (io.kubernetes.cri.sandbox-id), which
// whoever writes the pod spec controls: an id must be one plain path
// component, never "", "." or "..", never hold '/' or a control byte.
//
// The accepted set is containerd's: letters and digits, separated by
// single '.', '_' or '-'. Errors wrap errdefs.ErrInvalidArgument.
func ValidateID(kind, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s is empty: %w", kind, errdefs.ErrInvalidArgument)
	case len(id) > MaxIDLength:
		return fmt.Errorf("%s %.20q... is %d bytes, longer than %d: %w", kind, id, len(id), MaxIDLength, errdefs.ErrInvalidArgument)
	}
	prevSep := true // the id may not start with a separator
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9':
			prevSep = false
		case c == '.' || c == '_' || c == '-':
			if prevSep {
				return fmt.Errorf("%s %q: '.', '_' and '-' may only stand between letters or digits: %w", kind, id, errdefs.ErrInvalidArgument)
			}
			prevSep = true
		default:
			return fmt.Errorf("%s %q may only hold letters, digits, '.', '_' and '-' (found %q): %w", kind, id, c, errdefs.ErrInvalidArgument)
		}
	}
	if prevSep || strings.Contains(id, "..") {
		return fmt.Errorf("%s %q may not end with '.', '_' or '-': %w", kind, id, errdefs.ErrInvalidArgument)
	}
	return nil
}
