package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	api "github.com/berth-runtime/berth/api/agent/v1"
)

// The host's request is input from outside the VM: bad values fail with
// InvalidArgument before anything is changed.
func TestConfigureNetworkRejectsBadInput(t *testing.T) {
	many := make([]*api.NetworkInterface, maxNetInterfaces+1)
	for _, tc := range []struct {
		name string
		req  *api.NetworkConfig
		want string
	}{
		{"too many interfaces", &api.NetworkConfig{Interfaces: many}, "at most 8"},
		{"too many routes", &api.NetworkConfig{Routes: make([]*api.NetworkRoute, maxNetRoutes+1)}, "at most"},
	} {
		err := configureNetwork(context.Background(), tc.req)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestCheckIfaceName(t *testing.T) {
	for _, ok := range []string{"eth0", "net1", "enp0s3"} {
		if err := checkIfaceName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "lo", "a/b", "eth0:1", "averyveryverylongname", "..", "a b"} {
		if err := checkIfaceName(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
}
