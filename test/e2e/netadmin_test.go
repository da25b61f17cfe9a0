package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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

// underRuncAndBerthWithNetAdmin runs script in a container of image with
// CAP_NET_ADMIN under runc, then under Berth, and returns each one's
// stdout by runtime; a failing run fails the test.
func underRuncAndBerthWithNetAdmin(t *testing.T, image, name, script string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, rt := range []string{runcRuntime, berthRuntime} {
		id := name + "-" + shortRuntime(rt)
		r := ctr(t, "run", "--runtime", rt, "--rm", "--cap-add", "CAP_NET_ADMIN", image, id, "sh", "-c", script)
		if r.code != 0 {
			cleanupTask(t, id)
			t.Fatalf("under %s: exit %d\n%s%s", rt, r.code, r.stdout, r.stderr)
		}
		out[rt] = strings.TrimSpace(r.stdout)
		if r.stderr != "" {
			t.Logf("under %s, stderr:\n%s", rt, r.stderr)
		}
		t.Logf("under %s: %s", rt, r.elapsed.Round(time.Millisecond))
	}
	return out
}

// TestCtrNetAdminBridgeVethAsUnderRunc: a container with CAP_NET_ADMIN
// builds a bridge and a veth pair in its network namespace under Berth as
// it does under runc. With Berth's own kernel these are built in
// (guest/kernel/berth-x86_64.config); with the Debian kernel they would
// be modules, which the guest does not load on demand.
func TestCtrNetAdminBridgeVethAsUnderRunc(t *testing.T) {
	containerd(t)
	defer assertNoLeaks(t)
	out := underRuncAndBerthWithNetAdmin(t, busyboxImage, "netadmin", netAdminProbe)
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

// netToolsImage is busybox with the host's own iptables (both backends,
// every extension), nft and iproute2's ip and tc, with their libraries, so
// that runc and Berth run the same binaries. Its /etc/passwd has a mesh
// proxy's user (uid 1337, as Istio's).
const netToolsImage = "docker.io/library/nettools:berth"

var netTools = []string{"/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi", "/usr/sbin/nft", "/usr/sbin/ip", "/usr/sbin/tc"}

const xtablesExtensions = "/usr/lib/x86_64-linux-gnu/xtables"

var netToolsOnce struct {
	sync.Once
	err error
}

// importNetToolsImage builds and imports netToolsImage once per test
// binary.
func importNetToolsImage(t *testing.T) {
	t.Helper()
	containerd(t)
	netToolsOnce.Do(func() { netToolsOnce.err = buildNetToolsImage() })
	if netToolsOnce.err != nil {
		t.Fatalf("network tools test image: %v", netToolsOnce.err)
	}
}

func buildNetToolsImage() error {
	dir, err := os.MkdirTemp("", "berth-nettools-rootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if out, err := exec.Command("cp", "-a", env.rootfs+"/.", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s: %v: %s", env.rootfs, err, out)
	}
	exts, err := filepath.Glob(filepath.Join(xtablesExtensions, "*.so"))
	if err != nil || len(exts) == 0 {
		return fmt.Errorf("no iptables extensions in %s: apt-get install iptables (scripts/install-deps.sh)", xtablesExtensions)
	}
	files := append(append([]string{}, netTools...), exts...)
	libs := map[string]bool{}
	for _, f := range files {
		deps, err := sharedLibraries(f)
		if err != nil {
			return fmt.Errorf("%w: apt-get install iptables nftables iproute2 (scripts/install-deps.sh)", err)
		}
		for _, l := range deps {
			libs[l] = true
		}
	}
	for l := range libs {
		files = append(files, l)
	}
	for _, f := range files {
		if err := copyFileForTest(f, filepath.Join(dir, f), 0o755); err != nil {
			return err
		}
	}
	links := map[string]string{
		"iptables-nft": "xtables-nft-multi", "ip6tables-nft": "xtables-nft-multi",
		"iptables-legacy": "xtables-legacy-multi", "ip6tables-legacy": "xtables-legacy-multi",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, "usr/sbin", name)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nproxy:x:1337:1337:mesh proxy:/:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\nproxy:x:1337:\n"), 0o644); err != nil {
		return err
	}
	return importImage(netToolsImage, dir, []string{"/bin/sh"})
}

// sharedLibraries lists the libraries (and the dynamic loader) that bin
// loads, as the host's ldd resolves them.
func sharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v", bin, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

// netfilterRulesProbe installs, with one backend of iptables ($1: nft or
// legacy), the rules pods commonly install in their own network
// namespace, printing each rule's name and exit status: a service mesh's
// init container (Istio's istio-init: REDIRECT with the proxy's uid
// exempt; TPROXY mode: mangle marks, socket match, TPROXY; DNS capture:
// a conntrack zone from the raw table), MSS clamping, filters, rate
// limits, logging and REJECT over IPv4 and IPv6, and an ipset match.
const netfilterRulesProbe = `b=$1
step() { n=$1; shift; "$@" >/tmp/err 2>&1; r=$?; echo "$b-$n=$r"; [ $r = 0 ] || sed "s/^/$b-$n: /" /tmp/err >&2; }
ipt() { step "$1" "iptables-$b" $2; }
ip6t() { step "$1" "ip6tables-$b" $2; }
ipt nat-chain "-t nat -N MESH_OUTPUT"
ipt redirect "-t nat -A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001"
ipt owner "-t nat -A OUTPUT -p tcp -m owner ! --uid-owner 1337 -j RETURN"
ipt gid-owner "-t nat -A OUTPUT -m owner --gid-owner 1337 -j RETURN"
ipt dnat "-t nat -A OUTPUT -p tcp -d 10.0.0.1 --dport 80 -j DNAT --to-destination 10.0.0.2:8080"
ipt snat "-t nat -A POSTROUTING -s 10.0.0.0/8 -j SNAT --to-source 10.0.0.3"
ipt masquerade "-t nat -A POSTROUTING -o eth0 -j MASQUERADE"
ipt multiport "-A INPUT -p tcp -m multiport --dports 80,443 -j ACCEPT"
ipt comment "-A INPUT -m comment --comment mesh -j ACCEPT"
ipt conntrack "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
ipt state "-A INPUT -m state --state ESTABLISHED -j ACCEPT"
ipt limit "-A INPUT -p icmp -m limit --limit 5/s -j ACCEPT"
ipt hashlimit "-A INPUT -p tcp -m hashlimit --hashlimit-upto 10/s --hashlimit-name hl$b -j ACCEPT"
ipt connlimit "-A INPUT -p tcp --syn -m connlimit --connlimit-above 100 -j DROP"
ipt recent "-A INPUT -p tcp --dport 22 -m recent --set"
ipt iprange "-A INPUT -m iprange --src-range 10.0.0.1-10.0.0.9 -j ACCEPT"
ipt pkttype "-A INPUT -m pkttype --pkt-type broadcast -j DROP"
ipt mac "-A INPUT -m mac --mac-source 00:11:22:33:44:55 -j DROP"
ipt length "-A INPUT -m length --length 0:64 -j ACCEPT"
ipt addrtype "-A OUTPUT -m addrtype --dst-type LOCAL -j ACCEPT"
ipt statistic "-A INPUT -m statistic --mode random --probability 0.5 -j ACCEPT"
ipt reject "-A INPUT -p tcp --dport 9 -j REJECT --reject-with tcp-reset"
ipt log "-A INPUT -p tcp --dport 10 -j LOG --log-prefix mesh"
ipt nflog "-A INPUT -p tcp --dport 11 -j NFLOG --nflog-group 1"
ipt nfqueue "-A INPUT -p tcp --dport 12 -j NFQUEUE --queue-num 1 --queue-bypass"
ipt mark "-t mangle -A PREROUTING -j MARK --set-mark 0x539"
ipt mark-match "-t mangle -A PREROUTING -m mark --mark 0x539 -j RETURN"
ipt connmark "-t mangle -A PREROUTING -j CONNMARK --save-mark"
ipt connmark-match "-t mangle -A PREROUTING -m connmark --mark 0x539 -j RETURN"
ipt socket "-t mangle -A PREROUTING -p tcp -m socket --transparent -j MARK --set-mark 1"
ipt tproxy "-t mangle -A PREROUTING -p tcp -j TPROXY --tproxy-mark 0x1/0x1 --on-port 15006"
ipt tcpmss "-t mangle -A POSTROUTING -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
ipt checksum "-t mangle -A POSTROUTING -p udp --dport 68 -j CHECKSUM --checksum-fill"
ipt dscp "-t mangle -A POSTROUTING -p tcp --dport 443 -j DSCP --set-dscp 10"
ipt ct-zone "-t raw -A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1"
ipt notrack "-t raw -A PREROUTING -p udp --dport 123 -j NOTRACK"
ip6t ip6-reject "-A INPUT -p tcp --dport 9 -j REJECT --reject-with tcp-reset"
ip6t ip6-redirect "-t nat -A OUTPUT -p tcp -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15001"
ip6t ip6-masquerade "-t nat -A POSTROUTING -o eth0 -j MASQUERADE"
ip6t ip6-mark "-t mangle -A PREROUTING -j MARK --set-mark 1"
ip6t ip6-tproxy "-t mangle -A PREROUTING -p tcp -j TPROXY --tproxy-mark 0x1/0x1 --on-port 15006"
ip6t ip6-ct-zone "-t raw -A OUTPUT -p udp --dport 53 -j CT --zone 1"
ip6t ip6-log "-A INPUT -p tcp --dport 10 -j LOG"
for t in filter nat mangle raw; do "iptables-$b" -t $t -F; "iptables-$b" -t $t -X; "ip6tables-$b" -t $t -F; "ip6tables-$b" -t $t -X; done 2>/dev/null
true`

// nftRulesProbe is the same for nft's own expressions, one rule each.
const nftRulesProbe = `step() { n=$1; shift; nft "$@" >/tmp/err 2>&1; r=$?; echo "nft-$n=$r"; [ $r = 0 ] || sed "s/^/nft-$n: /" /tmp/err >&2; }
step table add table inet mesh
step chain add chain inet mesh in "{ type filter hook input priority 0; }"
step nat-chain add chain inet mesh out "{ type nat hook output priority -100; }"
step redirect add rule inet mesh out meta skuid != 1337 tcp dport 80 redirect to :15001
step ct add rule inet mesh in ct state established,related accept
step reject add rule inet mesh in tcp dport 9 reject with tcp reset
step log add rule inet mesh in tcp dport 10 log prefix mesh
step limit add rule inet mesh in icmp type echo-request limit rate 5/second accept
step fib add rule inet mesh in fib saddr . iif oif missing drop
step socket add rule inet mesh in socket transparent 1 accept
step quota add rule inet mesh in quota over 100 mbytes drop
step numgen add rule inet mesh in numgen random mod 2 0 accept
step set add set inet mesh blocked "{ type ipv4_addr; }"
step set-match add rule inet mesh in ip saddr @blocked drop
step delete delete table inet mesh`

// netfilterPacketsProbe shows with packets that the rules take effect,
// with one iptables backend ($1) or with nft ($1 = nft-native): three
// listeners on loopback answer with their name; the outbound connections
// of everyone but the proxy's uid are redirected to the first, and the
// third port is rejected.
const netfilterPacketsProbe = `b=$1
get() { nc -w 3 127.0.0.1 $1 </dev/null 2>/dev/null; }
nc -ll -p 15001 -e echo redirected & p1=$!; nc -ll -p 15002 -e echo direct & p2=$!; nc -ll -p 15003 -e echo open & p3=$!
for i in $(seq 50); do [ -n "$(get 15002)" ] && [ -n "$(get 15003)" ] && break; sleep 0.1; done
echo "$b-before=$(get 15002),$(get 15003)"
case $b in
nft-native)
  nft add table ip mesh && nft add chain ip mesh out "{ type nat hook output priority -100; }" &&
  nft add rule ip mesh out tcp dport 15002 meta skuid != 1337 redirect to :15001 &&
  nft add chain ip mesh filter "{ type filter hook output priority 0; }" &&
  nft add rule ip mesh filter oifname lo tcp dport 15003 reject with tcp reset ;;
*)
  "iptables-$b" -t nat -A OUTPUT -p tcp --dport 15002 -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15001 &&
  "iptables-$b" -A OUTPUT -o lo -p tcp --dport 15003 -j REJECT --reject-with tcp-reset ;;
esac
echo "$b-rules=$?"
echo "$b-root=$(get 15002)"
echo "$b-proxy=$(su proxy -s /bin/sh -c 'nc -w 3 127.0.0.1 15002 </dev/null' 2>/dev/null)"
echo "$b-rejected=$(get 15003)"
kill $p1 $p2 $p3; wait
true`

// TestCtrIptablesInPodAsUnderRunc: a container with CAP_NET_ADMIN installs
// the rules pods commonly install (a service mesh's init container first)
// with iptables-legacy, iptables-nft and nft, under Berth as under runc,
// and the rules act on packets: root's connections are redirected, the
// mesh proxy's uid is exempt, and a rejected port refuses.
func TestCtrIptablesInPodAsUnderRunc(t *testing.T) {
	importNetToolsImage(t)
	defer assertNoLeaks(t)
	script := "rules() {\n" + netfilterRulesProbe + "\n}\npackets() {\n" + netfilterPacketsProbe + "\n}\n" +
		"rules legacy; rules nft\n" + nftRulesProbe + "\nfor b in legacy nft nft-native; do packets $b; nft flush ruleset; iptables-legacy -t nat -F; iptables-legacy -F; done\n"
	out := underRuncAndBerthWithNetAdmin(t, netToolsImage, "netfilter", script)
	if out[berthRuntime] != out[runcRuntime] {
		t.Errorf("under berth:\n%s\nunder runc:\n%s", out[berthRuntime], out[runcRuntime])
	}
	for _, line := range strings.Split(out[berthRuntime], "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.Contains(k, "-before") && !strings.HasSuffix(k, "-root") &&
			!strings.HasSuffix(k, "-proxy") && !strings.HasSuffix(k, "-rejected") && v != "0" {
			t.Errorf("under berth: %s", line)
		}
	}
	for _, b := range []string{"legacy", "nft", "nft-native"} {
		for _, want := range []string{b + "-before=direct,open", b + "-rules=0", b + "-root=redirected", b + "-proxy=direct", b + "-rejected="} {
			if !strings.Contains("\n"+out[berthRuntime]+"\n", "\n"+want+"\n") {
				t.Errorf("under berth, want line %q:\n%s", want, out[berthRuntime])
			}
		}
	}
}

// linksAndQdiscsProbe sets up, in the container's network namespace, the
// links and traffic control pods commonly set up themselves, printing each
// step's name and exit status. iproute2's ip and tc by path: busybox's tc
// knows no qdisc options.
const linksAndQdiscsProbe = `step() { n=$1; shift; "$@" >/tmp/err 2>&1; r=$?; echo "$n=$r"; [ $r = 0 ] || sed "s/^/$n: /" /tmp/err >&2; }
step wireguard /usr/sbin/ip link add wg0 type wireguard
step dummy /usr/sbin/ip link add d0 type dummy
step dummy-up /usr/sbin/ip link set d0 up
step ifb /usr/sbin/ip link add ifb0 type ifb
step geneve /usr/sbin/ip link add gnv0 type geneve id 7 remote 10.0.0.1
step netem /usr/sbin/tc qdisc add dev lo root netem delay 1ms
step htb /usr/sbin/tc qdisc add dev d0 root handle 1: htb default 10
step htb-class /usr/sbin/tc class add dev d0 parent 1: classid 1:10 htb rate 10mbit
step sfq /usr/sbin/tc qdisc add dev d0 parent 1:10 handle 10: sfq
step fw-filter /usr/sbin/tc filter add dev d0 parent 1: protocol ip handle 1 fw flowid 1:10
step matchall-gact /usr/sbin/tc filter add dev d0 parent 1: matchall action pass
step tbf /usr/sbin/tc qdisc add dev ifb0 root tbf rate 1mbit burst 32kbit latency 400ms
step fq /usr/sbin/tc qdisc add dev wg0 root fq
step prio /usr/sbin/tc qdisc add dev gnv0 root prio
step clsact /usr/sbin/tc qdisc add dev lo clsact
step sctp test -d /proc/net/sctp`

// TestCtrLinksAndQdiscsPodsUseWorkInTheGuest: a container with NET_ADMIN
// creates WireGuard, dummy, ifb and geneve links and shapes or delays
// traffic with tc in its network namespace, and has SCTP, in the guest.
// runc on this host cannot do several of these (its kernel lacks
// wireguard, dummy, geneve and netem), so runc's result is logged, not
// compared.
func TestCtrLinksAndQdiscsPodsUseWorkInTheGuest(t *testing.T) {
	importNetToolsImage(t)
	defer assertNoLeaks(t)
	out := underRuncAndBerthWithNetAdmin(t, netToolsImage, "links", linksAndQdiscsProbe)
	for _, line := range strings.Split(out[berthRuntime], "\n") {
		if !strings.HasSuffix(line, "=0") {
			t.Errorf("under berth: %s", line)
		}
	}
	if n := strings.Count(out[berthRuntime], "=0"); n != strings.Count(linksAndQdiscsProbe, "\nstep ") {
		t.Errorf("under berth, %d steps passed:\n%s", n, out[berthRuntime])
	}
}
