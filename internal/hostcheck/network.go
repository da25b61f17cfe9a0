package hostcheck

import (
	"fmt"

	"github.com/berth-runtime/berth/internal/config"
)

// CheckNetwork names the pod networking requirements: /dev/net/tun for
// the taps of network.network_model = "tcfilter". vhost-net is reported
// but not used: Berth's virtio-net NICs are served by QEMU itself.
const CheckNetwork = "network"

func checkNetwork(e env, cfg *config.Config) Finding {
	f := Finding{Check: CheckNetwork}
	if _, err := e.stat("/dev/net/tun"); err != nil {
		f.Status = Warn
		f.Detail = "no /dev/net/tun: CRI pods with a network namespace will fail to start (containers without one, such as `ctr run`, work)"
		f.Fix = "modprobe tun"
		return f
	}
	vhost := "no /dev/vhost-net: QEMU serves the NICs itself (Berth does not use vhost-net)"
	if _, err := e.stat("/dev/vhost-net"); err == nil {
		vhost = "/dev/vhost-net present but not used: QEMU serves the NICs itself"
	}
	f.Detail = fmt.Sprintf("network_model %q: /dev/net/tun present; %s", cfg.Network.NetworkModel, vhost)
	return f
}
