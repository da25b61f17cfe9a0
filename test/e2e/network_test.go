package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/network"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// The network tests run pods on the private containerd's CNI network
// (Debian's bridge, host-local and portmap plugins on a private bridge and
// 10.x subnet; scripts/containerd-private.sh) and check what a user of the
// pod sees: the CNI address, MAC, MTU and routes inside the container,
// HTTP from the host, between Berth pods, between a Berth and a runc pod,
// through a hostPort, the pod's hostname and DNS configuration.

// busybox-static's wget crashes (SIGSEGV) with -T: the tests rely on
// ExecSync's timeout instead.

// httpdArgs serves "hello-from-<hostname>" on port 8080.
var httpdArgs = []string{"sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && echo serving && exec httpd -f -p 8080 -h /www"}

func TestCRIPodNetwork(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)

	hostPort := int32(20000 + os.Getpid()%20000)
	cfgA := podConfig(t, "net-a", nil)
	cfgA.DnsConfig = &cri.DNSConfig{Servers: []string{"10.253.0.10"}, Searches: []string{"berth-e2e.svc.cluster.local"}, Options: []string{"ndots:5"}}
	cfgA.PortMappings = []*cri.PortMapping{{Protocol: cri.Protocol_TCP, ContainerPort: 8080, HostPort: hostPort}}
	podA := c.runPodConfig(t, cfgA, criHandler)
	defer c.removePod(t, podA.id)
	podB := c.runPod(t, "net-b")
	defer c.removePod(t, podB.id)
	podR := c.runPodWith(t, "net-r", "runc", nil)
	defer c.removePod(t, podR.id)

	a, _ := c.createContainer(t, podA, "httpd", httpdArgs...)
	c.startContainer(t, a)
	b, _ := c.createContainer(t, podB, "client", "sleep", "1000")
	c.startContainer(t, b)
	r, _ := c.createContainer(t, podR, "httpd", httpdArgs...)
	c.startContainer(t, r)
	waitLogLine(t, filepath.Join(podA.logDir, "httpd.log"), "serving", time.Minute)
	waitLogLine(t, filepath.Join(podR.logDir, "httpd.log"), "serving", time.Minute)

	ipA, ipB, ipR := c.podIP(t, podA.id), c.podIP(t, podB.id), c.podIP(t, podR.id)
	t.Logf("pod IPs: berth a %s, berth b %s, runc %s", ipA, ipB, ipR)

	// What CNI configured in the pod's netns on the host is what the
	// container sees.
	want := hostIface(t, podA.netns, "eth0")
	if got := c.execOut(t, a, "cat", "/sys/class/net/eth0/address"); got != want.mac {
		t.Errorf("container eth0 MAC %q, CNI gave the veth %q", got, want.mac)
	}
	if got := c.execOut(t, a, "cat", "/sys/class/net/eth0/mtu"); got != fmt.Sprint(want.mtu) {
		t.Errorf("container eth0 MTU %s, CNI gave the veth %d", got, want.mtu)
	}
	if got := c.execOut(t, a, "ip", "-o", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(got, " "+want.addr+" ") {
		t.Errorf("container eth0 addresses %q, want %s (the CNI address)", got, want.addr)
	}
	routes := c.execOut(t, a, "ip", "-4", "route")
	for _, rt := range want.routes {
		if !strings.Contains(routes, rt) {
			t.Errorf("container routes:\n%s\nlack the CNI route %q", routes, rt)
		}
	}
	if got := c.execOut(t, a, "hostname"); got != "net-a" {
		t.Errorf("hostname in the container: %q, want the pod's net-a", got)
	}
	if got := c.execOut(t, a, "cat", "/etc/hostname"); got != "net-a" {
		t.Errorf("/etc/hostname in the container: %q, want net-a", got)
	}
	resolv := c.execOut(t, a, "cat", "/etc/resolv.conf")
	for _, line := range []string{"nameserver 10.253.0.10", "search berth-e2e.svc.cluster.local", "options ndots:5"} {
		if !strings.Contains(resolv, line) {
			t.Errorf("/etc/resolv.conf in the container:\n%s\nlacks %q from the pod's DNS config", resolv, line)
		}
	}

	// The host reaches the server in the Berth pod.
	if body := httpGet(t, "http://"+net.JoinHostPort(ipA, "8080")+"/"); body != "hello-from-net-a" {
		t.Errorf("GET from the host to the Berth pod: %q", body)
	}
	// Two Berth pods, and a Berth and a runc pod, reach each other.
	if got := c.execOut(t, b, "wget", "-qO-", "http://"+net.JoinHostPort(ipA, "8080")+"/"); got != "hello-from-net-a" {
		t.Errorf("Berth pod b -> Berth pod a: %q", got)
	}
	if got := c.execOut(t, a, "wget", "-qO-", "http://"+net.JoinHostPort(ipR, "8080")+"/"); got != "hello-from-net-r" {
		t.Errorf("Berth pod a -> runc pod: %q", got)
	}
	if got := c.execOut(t, r, "wget", "-qO-", "http://"+net.JoinHostPort(ipA, "8080")+"/"); got != "hello-from-net-a" {
		t.Errorf("runc pod -> Berth pod a: %q", got)
	}
	if got := c.execOut(t, b, "ping", "-c", "1", "-W", "5", ipR); !strings.Contains(got, "1 packets received") {
		t.Errorf("ping Berth pod b -> runc pod:\n%s", got)
	}
	// The hostPort (portmap DNAT on the host) reaches the pod.
	hostIP := hostAddress(t)
	if body := httpGet(t, "http://"+net.JoinHostPort(hostIP, fmt.Sprint(hostPort))+"/"); body != "hello-from-net-a" {
		t.Errorf("GET %s:%d (hostPort) -> Berth pod: %q", hostIP, hostPort, body)
	}

	// Per-interface traffic in the pod's metrics: what the host GETs and
	// the pods' requests above moved, counted on the host's veth.
	body := curl(t, "--unix-socket", sandbox.Dir(env.runDir, podA.id)+"/"+sandbox.MetricsSocketName, "http://sandbox/metrics")
	for _, dir := range []string{"receive", "transmit"} {
		prefix := `berth_pod_network_bytes_total{direction="` + dir + `",interface="eth0",sandbox_id="` + podA.id + `"} `
		var v float64
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, prefix) {
				fmt.Sscan(strings.TrimPrefix(l, prefix), &v)
			}
		}
		if v < 1000 {
			t.Errorf("metrics: %s%v, want the traffic of the requests above (> 1000 bytes); families:\n%s", prefix, v, grepLines(body, "berth_pod_network"))
		}
	}

	// The taps and filters exist while the pods run (so that the leak
	// check below them can fail).
	if res, err := network.Residue(podA.netns); err != nil || len(res) != 3 {
		t.Errorf("Berth's tap and qdiscs in pod a's netns: %v %v, want the tap and two ingress qdiscs", res, err)
	}
}

func TestCRIHostNetworkRefused(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	cfg := podConfig(t, "host-net", nil)
	cfg.Hostname = ""
	cfg.Linux.SecurityContext.NamespaceOptions.Network = cri.NamespaceMode_NODE
	resp, err := c.rt.RunPodSandbox(criCtx(t, 2*time.Minute), &cri.RunPodSandboxRequest{Config: cfg, RuntimeHandler: criHandler})
	if err == nil {
		c.removePod(t, resp.PodSandboxId)
		t.Fatal("RunPodSandbox of a hostNetwork pod succeeded, want it refused")
	}
	if !strings.Contains(err.Error(), "cannot share the host's network namespace") {
		t.Errorf("RunPodSandbox of a hostNetwork pod: %v; want the error to say a VM runtime cannot share the host's network namespace", err)
	}
	if p := qemuPids(); len(p) > 0 {
		t.Errorf("QEMU %v started for a refused pod", p)
	}
	// containerd keeps a failed sandbox's record; the kubelet removes it.
	list, _ := c.rt.ListPodSandbox(criCtx(t, time.Minute), &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{LabelSelector: map[string]string{"app": "host-net"}}})
	for _, p := range list.GetItems() {
		c.removePod(t, p.Id)
	}
}

// execOut runs cmd in a container and returns its trimmed stdout; a
// failure to run or a non-zero exit fails the test.
func (c *criClient) execOut(t *testing.T, id string, cmd ...string) string {
	t.Helper()
	ex, err := c.rt.ExecSync(criCtx(t, time.Minute), &cri.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync %v: %v", cmd, err)
	}
	if ex.ExitCode != 0 {
		t.Errorf("ExecSync %v: exit %d, stdout %q, stderr %q", cmd, ex.ExitCode, ex.Stdout, ex.Stderr)
	}
	return strings.TrimSpace(string(ex.Stdout))
}

// podNetwork is the pod's network status as CRI reports it.
func (c *criClient) podNetwork(t *testing.T, id string) *cri.PodSandboxNetworkStatus {
	t.Helper()
	st, err := c.rt.PodSandboxStatus(criCtx(t, time.Minute), &cri.PodSandboxStatusRequest{PodSandboxId: id})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	return st.GetStatus().GetNetwork()
}

// podIP is the pod's IPv4 address as CRI reports it.
func (c *criClient) podIP(t *testing.T, id string) string {
	t.Helper()
	ip := c.podNetwork(t, id).GetIp()
	if ip == "" {
		t.Fatalf("pod %s has no IP", id)
	}
	return ip
}

// podNetNS reads the pod's network namespace path from the verbose
// PodSandboxStatus (the sandbox's runtime spec), and records it for the
// leak check. "" for a pod on the node's network.
func (c *criClient) podNetNS(t *testing.T, id string) string {
	t.Helper()
	st, err := c.rt.PodSandboxStatus(criCtx(t, time.Minute), &cri.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	var info struct {
		RuntimeSpec specs.Spec `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatalf("PodSandboxStatus info: %v", err)
	}
	path := ""
	if l := info.RuntimeSpec.Linux; l != nil {
		for _, ns := range l.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				path = ns.Path
			}
		}
	}
	if path != "" {
		podNetNSes.Lock()
		podNetNSes.paths = append(podNetNSes.paths, path)
		podNetNSes.Unlock()
	}
	return path
}

// podNetNSes are the network namespaces of the pods the tests ran.
var podNetNSes struct {
	sync.Mutex
	paths []string
}

type ifaceInfo struct {
	mac    string
	mtu    int
	addr   string   // CIDR
	routes []string // as `ip route` prints them
}

// hostIface reads an interface in a netns with netlink.
func hostIface(t *testing.T, nsPath, name string) ifaceInfo {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatalf("open %s: %v", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("%s in %s: %v", name, nsPath, err)
	}
	info := ifaceInfo{mac: l.Attrs().HardwareAddr.String(), mtu: l.Attrs().MTU}
	addrs, _ := h.AddrList(l, netlink.FAMILY_V4)
	if len(addrs) == 0 {
		t.Fatalf("%s in %s has no IPv4 address", name, nsPath)
	}
	info.addr = addrs[0].IPNet.String()
	routes, _ := h.RouteList(l, netlink.FAMILY_V4)
	for _, r := range routes {
		if ones, _ := maskOf(r.Dst); ones == 0 && r.Gw != nil {
			info.routes = append(info.routes, "default via "+r.Gw.String()+" dev "+name)
		}
	}
	if len(info.routes) == 0 {
		t.Fatalf("no default route in %s", nsPath)
	}
	return info
}

// maskOf is a route destination's prefix length; netlink gives a default
// route as nil or as 0.0.0.0/0.
func maskOf(dst *net.IPNet) (int, int) {
	if dst == nil {
		return 0, 0
	}
	return dst.Mask.Size()
}

// httpGet GETs url from the host, retrying while the server starts.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Errorf("GET %s: %v", url, err)
			return ""
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// hostAddress is an IPv4 address of the host outside the CNI bridge, for
// a hostPort.
func hostAddress(t *testing.T) string {
	t.Helper()
	links, _ := netlink.LinkList()
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 || l.Type() != "device" && l.Type() != "veth" {
			continue
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if a.IP.IsGlobalUnicast() {
				return a.IP.String()
			}
		}
	}
	t.Skip("no host IPv4 address for a hostPort")
	return ""
}

// networkLeaks lists what pod networking left: Berth taps in the host's
// netns, taps or ingress qdiscs in a pod netns that still exists, and
// veths still attached to the private CNI bridge once no pod runs.
func networkLeaks() []string {
	var out []string
	links, _ := netlink.LinkList()
	bridge := cniBridge()
	bridgeIndex := 0
	for _, l := range links {
		if l.Attrs().Name == bridge && bridge != "" {
			bridgeIndex = l.Attrs().Index
		}
	}
	for _, l := range links {
		a := l.Attrs()
		if strings.HasSuffix(a.Name, "_berth") {
			out = append(out, "tap in the host netns: "+a.Name)
		}
		if bridgeIndex != 0 && a.MasterIndex == bridgeIndex {
			out = append(out, fmt.Sprintf("veth %s still on bridge %s", a.Name, bridge))
		}
	}
	podNetNSes.Lock()
	paths := append([]string(nil), podNetNSes.paths...)
	podNetNSes.Unlock()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			continue // containerd removed the namespace
		}
		res, err := network.Residue(p)
		if err != nil {
			continue
		}
		for _, r := range res {
			out = append(out, "pod netns "+p+": "+r)
		}
		out = append(out, "pod netns still exists: "+p)
	}
	return out
}

// cniBridge is the private containerd's CNI bridge name, "" before it
// started.
func cniBridge() string {
	if ctrd.dir == "" {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(ctrd.dir, "cni", "net.d", "10-berth.conflist"))
	if err != nil {
		return ""
	}
	var conf struct {
		Plugins []struct {
			Type   string `json:"type"`
			Bridge string `json:"bridge"`
		} `json:"plugins"`
	}
	if json.Unmarshal(b, &conf) != nil {
		return ""
	}
	for _, p := range conf.Plugins {
		if p.Type == "bridge" {
			return p.Bridge
		}
	}
	return ""
}

// A shim killed with SIGKILL takes QEMU with it; the taps go with QEMU's
// descriptors, and what is left in the pod's netns (the veth's ingress
// qdisc) is removed by `shim delete` or the next sandbox's stale cleanup,
// while the pod's netns still exists.
func TestCRIShimKilledLeavesNoNetwork(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "net-killed")
	defer c.removePod(t, pod.id)
	id, _ := c.createContainer(t, pod, "sleep", "sleep", "1000")
	c.startContainer(t, id)
	if res, err := network.Residue(pod.netns); err != nil || len(res) != 3 {
		t.Fatalf("Berth's tap and qdiscs in the pod netns: %v %v, want the tap and two ingress qdiscs", res, err)
	}
	shims := shimPids()
	if len(shims) != 1 {
		t.Fatalf("shim pids %v, want one", shims)
	}
	syscall.Kill(shims[0], syscall.SIGKILL)
	eventually(t, 15*time.Second, "QEMU exits with its killed shim", func() error {
		if p := qemuPids(); len(p) > 0 {
			return fmt.Errorf("QEMU %v outlived its shim", p)
		}
		return nil
	})
	left, _ := network.Residue(pod.netns)
	t.Logf("in the pod netns once QEMU was gone: %v", left)
	// The next sandbox's shim collects what the dead one left, if
	// containerd's `shim delete` has not already.
	other := c.runPod(t, "net-after-kill")
	defer c.removePod(t, other.id)
	var res []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var err error
		if res, err = network.Residue(pod.netns); err == nil && len(res) == 0 {
			break
		}
	}
	if len(res) > 0 {
		t.Errorf("left in the killed pod's netns: %v", res)
	}
}

// portForward does what kubectl port-forward does with the URL CRI's
// PortForward returns: an SPDY/3.1 upgrade (portforward.k8s.io), an error
// and a data stream for the port, then raw bytes on the data stream. It
// sends request and returns what comes back until the server closes.
func portForward(t *testing.T, url string, port int32, request string) string {
	t.Helper()
	sc := dialSPDY(t, url, "portforward.k8s.io")
	hdr := func(kind string) http.Header {
		return http.Header{"Streamtype": {kind}, "Port": {fmt.Sprint(port)}, "Requestid": {"0"}}
	}
	errStream, err := sc.CreateStream(hdr("error"), nil, false)
	if err != nil {
		t.Fatalf("error stream: %v", err)
	}
	errStream.Close() // we send nothing on it
	data, err := sc.CreateStream(hdr("data"), nil, false)
	if err != nil {
		t.Fatalf("data stream: %v", err)
	}
	if _, err := data.Write([]byte(request)); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() { b, _ := io.ReadAll(data); got <- string(b) }()
	go func() {
		if b, _ := io.ReadAll(errStream); len(b) > 0 {
			t.Logf("port-forward error stream: %s", b)
		}
	}()
	select {
	case s := <-got:
		return s
	case <-time.After(30 * time.Second):
		t.Fatalf("no reply through port-forward within 30s")
		return ""
	}
}

// CRI PortForward (kubectl port-forward) to a Berth pod's port returns
// the server's reply.
func TestCRIPortForward(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	pod := c.runPod(t, "net-pf")
	defer c.removePod(t, pod.id)
	id, _ := c.createContainer(t, pod, "httpd", httpdArgs...)
	c.startContainer(t, id)
	waitLogLine(t, filepath.Join(pod.logDir, "httpd.log"), "serving", time.Minute)
	// httpd listens a moment after "serving" (exec under TCG).
	httpGet(t, "http://"+net.JoinHostPort(c.podIP(t, pod.id), "8080")+"/")
	resp, err := c.rt.PortForward(criCtx(t, time.Minute), &cri.PortForwardRequest{PodSandboxId: pod.id, Port: []int32{8080}})
	if err != nil {
		t.Fatalf("PortForward: %v", err)
	}
	reply := portForward(t, resp.Url, 8080, "GET / HTTP/1.0\r\n\r\n")
	if !strings.Contains(reply, "200 OK") || !strings.Contains(reply, "hello-from-net-pf") {
		t.Errorf("reply through port-forward:\n%s\ncontainerd log:\n%s", reply, tail(filepath.Join(ctrd.dir, "containerd.log"), 15))
	}
}

// podIPv6 is the pod's IPv6 address from PodSandboxStatus (CNI's second
// range: the private network is dual-stack).
func (c *criClient) podIPv6(t *testing.T, id string) string {
	t.Helper()
	nw := c.podNetwork(t, id)
	for _, ip := range nw.GetAdditionalIps() {
		if strings.Contains(ip.GetIp(), ":") {
			return ip.GetIp()
		}
	}
	t.Fatalf("pod %s has no IPv6 address: %+v", id, nw)
	return ""
}

// TestCRIDualStackPodTalksIPv6: on a dual-stack pod network, the Berth
// pod's NIC in the guest has the IPv6 address and default route CNI gave
// its veth, the host reaches its server over IPv6, and it reaches a runc
// pod's server over IPv6.
func TestCRIDualStackPodTalksIPv6(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	podA := c.runPod(t, "v6-a")
	defer c.removePod(t, podA.id)
	podR := c.runPodWith(t, "v6-r", "runc", nil)
	defer c.removePod(t, podR.id)
	a, _ := c.createContainer(t, podA, "httpd", httpdArgs...)
	c.startContainer(t, a)
	r, _ := c.createContainer(t, podR, "httpd", httpdArgs...)
	c.startContainer(t, r)
	waitLogLine(t, filepath.Join(podA.logDir, "httpd.log"), "serving", time.Minute)
	waitLogLine(t, filepath.Join(podR.logDir, "httpd.log"), "serving", time.Minute)

	ipA, ipR := c.podIPv6(t, podA.id), c.podIPv6(t, podR.id)
	t.Logf("pod IPv6 addresses: berth %s, runc %s", ipA, ipR)
	if got := c.execOut(t, a, "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"); !strings.Contains(got, " "+ipA+"/64 ") {
		t.Errorf("container eth0 IPv6 addresses %q, want %s/64 (the CNI address)", got, ipA)
	}
	if got := c.execOut(t, a, "ip", "-6", "route", "show", "default"); !strings.HasPrefix(got, "default via ") {
		t.Errorf("container IPv6 default route %q, want the CNI gateway's", got)
	}
	if body := httpGet(t, "http://"+net.JoinHostPort(ipA, "8080")+"/"); body != "hello-from-v6-a" {
		t.Errorf("GET over IPv6 from the host to the Berth pod: %q", body)
	}
	// busybox's wget crashes on an IPv6 URL (also on the host); nc does
	// not.
	got := c.execOut(t, a, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 "+ipR+" 8080 | tail -n 1")
	if got != "hello-from-v6-r" {
		t.Errorf("GET over IPv6 from the Berth pod to the runc pod: %q", got)
	}
}
