package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/network"
	"github.com/berth-runtime/berth/internal/oci"
	"github.com/berth-runtime/berth/internal/stats"
	"github.com/berth-runtime/berth/internal/vmm"
)

// networkFileName records what the sandbox added to the pod's network
// namespace, so that a fresh process can remove it after a crash.
const networkFileName = "network.json"

// ErrHostNetwork is wrapped by the error for a CRI pod without a network
// namespace of its own.
var ErrHostNetwork = errors.New("a VM runtime cannot share the host's network namespace")

// PodNetNS returns the network namespace a sandbox's VM connects to: the
// path of the spec's network namespace, or "" when there is none (`ctr
// run`: the containers get a namespace of their own inside the guest,
// with loopback only). A CRI pod sandbox without one is a hostNetwork pod,
// which a VM cannot serve: its containers would run in the guest's network
// namespace, not the host's, and silently see another network.
func PodNetNS(spec *specs.Spec) (string, error) {
	ns, _ := oci.Namespace(spec, specs.NetworkNamespace)
	path := ns.Path
	if path == "" && oci.IsPodSandbox(spec.Annotations) {
		return "", fmt.Errorf("hostNetwork pods are not supported by Berth: %w (use a runc runtime class for this pod): %w", ErrHostNetwork, errdefs.ErrNotImplemented)
	}
	return path, nil
}

// networkRecord is network.json.
type networkRecord struct {
	NetNS      string   `json:"netns"`
	Taps       []string `json:"taps"`
	Interfaces []string `json:"interfaces"`
}

// attachNetwork connects the pod netns to taps and describes a NIC per
// interface in m. Berth's tap descriptors are closed once QEMU holds its
// own (closeTaps), so the taps vanish with QEMU.
func (s *Sandbox) attachNetwork(ctx context.Context, nsPath string, m *vmm.Spec, undo *cleanupStack) error {
	if nsPath == "" {
		return nil
	}
	pod, err := network.Attach(ctx, nsPath, network.Model(s.cfg.Network.NetworkModel))
	if err != nil {
		return fmt.Errorf("connect pod network (network.network_model = %q): %w", s.cfg.Network.NetworkModel, err)
	}
	s.net = pod
	rec := networkRecord{NetNS: nsPath, Taps: pod.TapNames()}
	for _, e := range pod.Endpoints {
		rec.Interfaces = append(rec.Interfaces, e.Name)
	}
	undo.push(func() {
		pod.CloseTaps()
		if err := network.Detach(nsPath, rec.Taps, rec.Interfaces); err != nil {
			logrus.WithField("sandbox", s.id).WithError(err).Warn("detach pod network")
		}
	})
	b, _ := json.Marshal(rec)
	if err := os.WriteFile(s.path(networkFileName), b, 0o600); err != nil {
		return err
	}
	for i, e := range pod.Endpoints {
		m.NetDevices = append(m.NetDevices, vmm.NetDevice{ID: fmt.Sprintf("net%d", i), Tap: e.Tap, MAC: e.MAC, MTU: e.MTU})
	}
	s.serveLoopback(nsPath, undo)
	return nil
}

// serveLoopback makes CRI PortForward (which dials the pod netns's
// loopback) reach the guest. Without it the pod runs, only port
// forwarding fails, so a failure is logged, not returned.
func (s *Sandbox) serveLoopback(nsPath string, undo *cleanupStack) {
	for _, e := range s.net.Endpoints {
		for _, a := range e.Addrs {
			if !a.Addr().Is4() {
				continue
			}
			f, err := network.ServeLoopback(nsPath, a.Addr())
			if err != nil {
				logrus.WithField("sandbox", s.id).WithError(err).Warn("port forwarding to the pod will not work")
				return
			}
			s.forward = f
			undo.push(func() { f.Close() })
			return
		}
	}
}

// configureGuestNetwork gives the agent the interfaces and routes; it
// runs before the first container is created.
func (s *Sandbox) configureGuestNetwork(ctx context.Context) error {
	if s.net == nil {
		return nil // no pod network: containers keep their own loopback-only namespaces
	}
	req := &api.NetworkConfig{}
	for _, e := range s.net.Endpoints {
		i := &api.NetworkInterface{Name: e.Name, Mac: e.MAC.String(), Mtu: uint32(e.MTU)}
		for _, a := range e.Addrs {
			i.Addresses = append(i.Addresses, a.String())
		}
		req.Interfaces = append(req.Interfaces, i)
	}
	for _, r := range s.net.Routes {
		ar := &api.NetworkRoute{Device: r.Device, Scope: uint32(r.Scope), Family: uint32(r.Family)}
		if r.Dst.IsValid() {
			ar.Destination = r.Dst.String()
		}
		if r.Gw.IsValid() {
			ar.Gateway = r.Gw.String()
		}
		if r.Src.IsValid() {
			ar.Source = r.Src.String()
		}
		req.Routes = append(req.Routes, ar)
	}
	if _, err := s.agent.ConfigureNetwork(ctx, req); err != nil {
		return fmt.Errorf("configure the pod network in the guest: %w", err)
	}
	return nil
}

// detachNetwork removes the taps and filters from the pod netns.
func (s *Sandbox) detachNetwork() error {
	if s.forward != nil {
		s.forward.Close()
	}
	return detachRecorded(s.dir)
}

// detachRecorded undoes what network.json records; also used on the
// directory of a sandbox whose owner died.
func detachRecorded(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, networkFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rec networkRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("%s: %w", networkFileName, err)
	}
	return network.Detach(rec.NetNS, rec.Taps, rec.Interfaces)
}

// networkSample reads the pod interfaces' counters for the metrics.
func (s *Sandbox) networkSample() []stats.InterfaceSample {
	if s.net == nil || len(s.net.Endpoints) == 0 {
		return nil
	}
	var names []string
	for _, e := range s.net.Endpoints {
		names = append(names, e.Name)
	}
	cs, err := network.ReadCounters(s.net.NetNSPath, names)
	if err != nil {
		return nil
	}
	out := make([]stats.InterfaceSample, 0, len(cs))
	for _, c := range cs {
		out = append(out, stats.InterfaceSample{Name: c.Name,
			RxBytes: c.RxBytes, RxPackets: c.RxPackets, RxErrors: c.RxErrors, RxDropped: c.RxDropped,
			TxBytes: c.TxBytes, TxPackets: c.TxPackets, TxErrors: c.TxErrors, TxDropped: c.TxDropped})
	}
	return out
}
