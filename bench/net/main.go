// Command net measures pod networking for Berth and runc in the same run:
// TCP throughput host->pod and pod->host, and HTTP request latency from
// the host to a busybox httpd in the pod, over the private containerd's
// CNI bridge (scripts/containerd-private.sh). For Berth it also samples
// the CPU time of each QEMU thread during the host->pod transfer, which
// says where the time goes (the vCPU thread emulating the guest's network
// stack under TCG, or QEMU's main loop moving frames between the tap and
// virtio-net).
//
// Usage (root, `make build` and the guest image built):
//
//	go run ./bench/net -state-dir /var/lib/berth -rootfs bin/rootfs-busybox
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/bench/internal/benchtab"
	"github.com/berth-runtime/berth/bench/internal/crienv"
)

const (
	sinkPort = 5001 // nc -l in the pod, discards
	httpPort = 8080
)

// The pod serves HTTP and discards whatever arrives on sinkPort.
var podScript = fmt.Sprintf("mkdir -p /www; echo hello > /www/index.html; "+
	"(while true; do nc -l -p %d > /dev/null; done) & exec httpd -f -p %d -h /www", sinkPort, httpPort)

type options struct {
	runs, requests, mib int
	crienv.Paths
}

func main() {
	var o options
	flag.IntVar(&o.runs, "runs", 3, "transfers per direction and runtime")
	flag.IntVar(&o.mib, "mib", 32, "MiB per transfer")
	flag.IntVar(&o.requests, "requests", 200, "timed HTTP requests per runtime")
	o.Paths.Flags()
	flag.Parse()
	crienv.Main(func(ctx context.Context) error { return run(ctx, o) })
}

type pod struct {
	id, ctr, ip, gw string
}

func run(ctx context.Context, o options) error {
	if o.requests < 100 {
		return fmt.Errorf("-requests %d: use at least 100, or p99 means nothing", o.requests)
	}
	env, err := crienv.Start(ctx, "net", o.Paths)
	if err != nil {
		return err
	}
	defer env.Close()
	tmp := env.Dir
	rt, runDir := env.RT, env.RunDir

	handlers := []string{"runc", "berth"}
	pods := map[string]pod{}
	for _, h := range handlers {
		p, err := startPod(ctx, env, h, tmp)
		if p.id != "" {
			defer env.RemovePod(p.id)
		}
		if err != nil {
			return fmt.Errorf("%s pod: %w", h, err)
		}
		if err := waitHTTP(p.ip); err != nil {
			logs, _ := filepath.Glob(filepath.Join(tmp, "logs-"+h, "*.log"))
			var b []byte
			if len(logs) > 0 {
				b, _ = os.ReadFile(logs[0])
			}
			return fmt.Errorf("%s pod: %w; container log:\n%s", h, err, b)
		}
		pods[h] = p
	}

	bytes := int64(o.mib) << 20
	type result struct {
		in, out []float64 // MiB/s
		lat     []time.Duration
	}
	res := map[string]*result{}
	var threads []threadCPU
	for _, h := range handlers {
		res[h] = &result{}
	}
	for i := 0; i < o.runs; i++ {
		for _, h := range handlers {
			p := pods[h]
			var before map[string]float64
			qemu := qemuPid(runDir)
			if h == "berth" && i == 0 {
				before = threadTimes(qemu)
			}
			t0 := time.Now()
			if err := sendTo(p.ip, bytes); err != nil {
				return fmt.Errorf("%s host->pod: %w", h, err)
			}
			d := time.Since(t0)
			if before != nil {
				threads = threadDelta(before, threadTimes(qemu), d)
			}
			res[h].in = append(res[h].in, float64(o.mib)/d.Seconds())
			d, err := receiveFrom(ctx, rt, p, bytes)
			if err != nil {
				return fmt.Errorf("%s pod->host: %w", h, err)
			}
			res[h].out = append(res[h].out, float64(o.mib)/d.Seconds())
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 10+o.requests; i++ {
		for _, h := range handlers {
			t0 := time.Now()
			resp, err := client.Get("http://" + net.JoinHostPort(pods[h].ip, strconv.Itoa(httpPort)) + "/")
			if err != nil {
				return fmt.Errorf("%s GET: %w", h, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if i >= 10 {
				res[h].lat = append(res[h].lat, time.Since(t0))
			}
		}
	}

	fmt.Printf("Pod networking over a CNI bridge: %d transfers of %d MiB per direction, %d HTTP GETs (new connection each) after 10 warm-up ones\n\n", o.runs, o.mib, o.requests)
	fmt.Printf("| runtime | host->pod MiB/s (median) | pod->host MiB/s (median) | HTTP p50 | HTTP p99 |\n|---|---|---|---|---|\n")
	for _, h := range handlers {
		r := res[h]
		l := benchtab.Sorted(r.lat)
		fmt.Printf("| %s | %.1f | %.1f | %.2f ms | %.2f ms |\n", h, median(r.in), median(r.out),
			ms(benchtab.Percentile(l, 50)), ms(benchtab.Percentile(l, 99)))
	}
	rb, rr := res["berth"], res["runc"]
	fmt.Printf("\nratio runc/berth: host->pod %.1fx, pod->host %.1fx; HTTP p50 berth/runc %.1fx\n",
		median(rr.in)/median(rb.in), median(rr.out)/median(rb.out),
		ms(benchtab.Percentile(benchtab.Sorted(rb.lat), 50))/ms(benchtab.Percentile(benchtab.Sorted(rr.lat), 50)))
	if len(threads) > 0 {
		fmt.Printf("\nQEMU threads during the first Berth host->pod transfer (CPU seconds per wall second):\n\n| thread | CPU |\n|---|---|\n")
		for _, t := range threads {
			if t.share >= 0.005 {
				fmt.Printf("| %s | %.2f |\n", t.name, t.share)
			}
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// sendTo writes n bytes to the pod's sink and waits for the pod to close
// (nc exits once it has read everything).
func sendTo(ip string, n int64) error {
	c, err := net.DialTimeout("tcp4", net.JoinHostPort(ip, strconv.Itoa(sinkPort)), 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := io.CopyN(c, zeros{}, n); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	_, err = io.Copy(io.Discard, c)
	return err
}

// receiveFrom has the pod send n bytes to a listener on the host (the
// pod's gateway address) and times from accept to the n-th byte.
func receiveFrom(ctx context.Context, rt cri.RuntimeServiceClient, p pod, n int64) (time.Duration, error) {
	ln, err := net.Listen("tcp4", net.JoinHostPort(p.gw, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	errc := make(chan error, 1)
	go func() {
		cmd := fmt.Sprintf("head -c %d /dev/zero | nc %s %d", n, p.gw, port)
		_, err := rt.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: p.ctr, Cmd: []string{"sh", "-c", cmd}, Timeout: 300})
		errc <- err
	}()
	c, err := ln.Accept()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	t0 := time.Now()
	if _, err := io.CopyN(io.Discard, c, n); err != nil {
		return 0, err
	}
	d := time.Since(t0)
	c.Close()
	<-errc
	return d, nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type threadCPU struct {
	name  string
	share float64
}

// threadTimes reads utime+stime (seconds) of each QEMU thread, keyed by
// "tid comm".
func threadTimes(pid int) map[string]float64 {
	out := map[string]float64{}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, t := range tasks {
		comm, _ := os.ReadFile(t + "/comm")
		stat, err := os.ReadFile(t + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		k, _ := strconv.ParseFloat(f[12], 64)
		out[filepath.Base(t)+" "+strings.TrimSpace(string(comm))] = (u + k) / 100 // USER_HZ
	}
	return out
}

func threadDelta(before, after map[string]float64, wall time.Duration) []threadCPU {
	var out []threadCPU
	for k, v := range after {
		name := k[strings.IndexByte(k, ' ')+1:]
		out = append(out, threadCPU{name: name + " (" + k[:strings.IndexByte(k, ' ')] + ")", share: (v - before[k]) / wall.Seconds()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].share > out[j].share })
	return out
}

func qemuPid(runDir string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), runDir) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	return 0
}

func waitHTTP(ip string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + net.JoinHostPort(ip, strconv.Itoa(httpPort)) + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("httpd in the pod does not answer: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startPod runs a pod on the CNI network with the server container and
// finds its address.
func startPod(ctx context.Context, env *crienv.Env, handler, tmp string) (pod, error) {
	var p pod
	var err error
	p.id, p.ctr, err = env.StartPod(ctx, crienv.Pod{
		Handler: handler, Name: "net-" + handler, Hostname: "net-" + handler, LogDir: filepath.Join(tmp, "logs-"+handler),
		Container: "server", Command: []string{"sh", "-c", podScript},
	})
	if err != nil {
		return p, err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := env.RT.PodSandboxStatus(cctx, &cri.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		return p, err
	}
	p.ip = st.GetStatus().GetNetwork().GetIp()
	ip := net.ParseIP(p.ip).To4()
	if ip == nil {
		return p, fmt.Errorf("pod has no IPv4 address (%q)", p.ip)
	}
	// scripts/containerd-private.sh puts the bridge's address at .1.
	p.gw = net.IPv4(ip[0], ip[1], ip[2], 1).String()
	return p, nil
}
