package agent

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
)

func TestClassifyExecFailure(t *testing.T) {
	wrap := func(s string) error {
		return fmt.Errorf("start init of container \"c\": %w", fmt.Errorf("unable to start container process: error during container init: %s", s))
	}
	for _, tc := range []struct {
		msg   string
		class error // nil: unclassified
	}{
		{`exec: "nosuch": executable file not found in $PATH`, errdefs.ErrNotFound},
		{`exec: "/no/such/cmd": stat /no/such/cmd: no such file or directory`, errdefs.ErrNotFound},
		{`exec: "/etc/passwd": permission denied`, errdefs.ErrPermissionDenied},
		{`exec: "/bin": is a directory`, errdefs.ErrPermissionDenied},
		{`unable to apply cgroup configuration: no such file or directory`, nil},
		{`mount /proc: permission denied`, nil},
	} {
		err := classifyExecFailure(wrap(tc.msg))
		for _, c := range []error{errdefs.ErrNotFound, errdefs.ErrPermissionDenied} {
			if errors.Is(err, c) != (c == tc.class) {
				t.Errorf("%q: class %v? %v", tc.msg, c, errors.Is(err, c))
			}
		}
	}
	if classifyExecFailure(nil) != nil {
		t.Fatal("nil")
	}
}
