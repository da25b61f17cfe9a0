package e2e

import (
	"strings"
	"testing"
)

// netAdminProbe builds what container workloads with NET_ADMIN commonly
// build in their own network namespace: a bridge (bridge, stp, llc) and a
// veth pair enslaved to it, with IPv6 on the bridge. Each step prints its
// name and the exit status of the command, so a missing kernel feature
// shows as one line. (busybox's ip knows neither VLAN links nor tuntap, so
// those are left to the kernel configuration's unit test.)
const netAdminProbe = `step() { n=$1; shift; "$@" >/dev/null 2>&1; echo "$n=$?"; }
step bridge ip link add br0 type bridge
step veth ip link add v0 type veth peer name v1
step master ip link set v0 master br0
step up ip link set br0 up
step sysfs test -d /sys/class/net/br0/bridge
step ipv6 test -e /proc/sys/net/ipv6/conf/br0`

// TestCtrNetAdminBridgeVethAsUnderRunc: a container with CAP_NET_ADMIN
// builds a bridge and a veth pair in its network namespace under Berth as
// it does under runc. With Berth's own kernel these are built in
// (guest/kernel/berth-x86_64.config); with the Debian kernel they would
// be modules, which the guest does not load on demand.
func TestCtrNetAdminBridgeVethAsUnderRunc(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	out := map[string]string{}
	for _, rt := range []string{runcRuntime, berthRuntime} {
		id := "netadmin-" + shortRuntime(rt)
		r := ctr(t, "run", "--runtime", rt, "--rm", "--cap-add", "CAP_NET_ADMIN", busyboxImage, id, "sh", "-c", netAdminProbe)
		if r.code != 0 {
			cleanupTask(t, id)
			t.Fatalf("under %s: exit %d\n%s%s", rt, r.code, r.stdout, r.stderr)
		}
		out[rt] = strings.TrimSpace(r.stdout)
	}
	t.Logf("runc:\n%s", out[runcRuntime])
	if out[berthRuntime] != out[runcRuntime] {
		t.Errorf("under berth:\n%s\nunder runc:\n%s", out[berthRuntime], out[runcRuntime])
	}
	for _, step := range []string{"bridge", "veth", "master", "up", "sysfs", "ipv6"} {
		if !strings.Contains(out[berthRuntime], step+"=0") {
			t.Errorf("%s failed under berth:\n%s", step, out[berthRuntime])
		}
	}
}
