package agent

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// Why a process could not be executed matters to users: a shell, Docker
// and Podman exit 127 when the program does not exist and 126 when it
// exists but cannot be executed, and keep 125 for the runtime's own
// failures. runc's init looks the program up (exec.LookPath) before
// Create returns, and reports a failure to libcontainer as text over its
// sync pipe (an initError holding only a message), so the class can only
// be read back from that text. Its form is Go's os/exec.Error,
// `exec: "NAME": REASON`, with REASON from os/exec or the stat errno. The
// classes are containerd's: NotFound for 127, PermissionDenied for 126.
var execFailureClasses = []struct {
	reason string
	class  error
}{
	{"executable file not found in $PATH", errdefs.ErrNotFound},
	{"no such file or directory", errdefs.ErrNotFound},
	{"not a directory", errdefs.ErrNotFound},
	{"permission denied", errdefs.ErrPermissionDenied},
	{"is a directory", errdefs.ErrPermissionDenied},
}

// classifyExecFailure adds the class of a program lookup failure to err,
// or returns err unchanged.
func classifyExecFailure(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	i := strings.LastIndex(msg, `exec: "`)
	if i < 0 {
		return err
	}
	for _, c := range execFailureClasses {
		if strings.HasSuffix(msg[i:], ": "+c.reason) {
			return fmt.Errorf("%w: %w", err, c.class)
		}
	}
	return err
}
