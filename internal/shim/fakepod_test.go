package shim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/berth-runtime/berth/api/agent/v1"
	"github.com/berth-runtime/berth/internal/config"
	"github.com/berth-runtime/berth/internal/memory"
	"github.com/berth-runtime/berth/internal/sandbox"
)

// fakePod is a pod VM without a VM: containers and processes exist in
// memory, a kill ends a process, Destroy ends the VM. It records the
// guest calls made.
type fakePod struct {
	done     chan struct{}
	doneOnce sync.Once

	mu    sync.Mutex
	calls []string
	procs map[string]*fakeProc // "container/exec"
	// statsOOMKills is the OOM-kill count ContainerStats reports.
	statsOOMKills uint64
	// mem, when set, gives the VM resizable (virtio-mem) memory;
	// without it the VM's memory is fixed.
	mem *fakeMemory
}

// fakeMemory is a VM's virtio-mem memory: ResizeMemory moves it, one
// resize at a time, as the sandbox's own lock does.
type fakeMemory struct {
	resizing sync.Mutex
	mu       sync.Mutex
	current  int // MiB
	// shrinkGate, when set, holds every shrink until it is closed: a
	// guest whose memory is still in use.
	shrinkGate chan struct{}
}

func (m *fakeMemory) currentMiB() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.current
}

func newFakePod() *fakePod {
	return &fakePod{done: make(chan struct{}), procs: map[string]*fakeProc{}}
}

var _ podVM = (*fakePod)(nil)

func (f *fakePod) record(c string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
}

func (f *fakePod) VMMPid() int           { return 4242 }
func (f *fakePod) Done() <-chan struct{} { return f.done }
func (f *fakePod) VMError() error        { return errors.New("fake VM destroyed") }
func (f *fakePod) Destroy(context.Context) error {
	f.doneOnce.Do(func() { close(f.done) })
	return nil
}

func (f *fakePod) newProc(key string) *fakeProc {
	p := &fakeProc{exit: make(chan sandbox.ExitStatus, 1)}
	f.mu.Lock()
	f.procs[key] = p
	f.mu.Unlock()
	return p
}

func (f *fakePod) proc(key string) *fakeProc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.procs[key]
}

func (f *fakePod) CreateContainer(_ context.Context, cc sandbox.ContainerConfig) (guestProcess, error) {
	f.record("create " + cc.ID)
	return f.newProc(cc.ID + "/"), nil
}

func (f *fakePod) Exec(_ context.Context, cid, eid string, _ *specs.Process, _ sandbox.IO) (guestProcess, error) {
	f.record("exec " + cid + "/" + eid)
	return f.newProc(cid + "/" + eid), nil
}

func (f *fakePod) DeleteContainer(_ context.Context, id string) error {
	f.record("delete " + id)
	return nil
}
func (f *fakePod) ReleaseContainer(_ context.Context, id string) error {
	f.record("release " + id)
	return nil
}
func (f *fakePod) DeleteExec(_ context.Context, cid, eid string) error {
	f.record("delete " + cid + "/" + eid)
	return nil
}
func (f *fakePod) PauseContainer(_ context.Context, id string) error {
	f.record("pause " + id)
	return nil
}
func (f *fakePod) ResumeContainer(_ context.Context, id string) error {
	f.record("resume " + id)
	return nil
}
func (f *fakePod) UpdateContainer(_ context.Context, id string, _ *specs.LinuxResources) error {
	f.record("update " + id)
	return nil
}
func (f *fakePod) ContainerStats(_ context.Context, id string) (*api.StatsResponse, error) {
	f.record("stats " + id)
	f.mu.Lock()
	defer f.mu.Unlock()
	return &api.StatsResponse{CgroupVersion: 2, MemoryOomKillEvents: f.statsOOMKills}, nil
}

// called reports whether the guest call c was made.
func (f *fakePod) called(c string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.calls, c)
}
func (f *fakePod) ReleaseDevices(context.Context, string) error { return nil }

// WaitOOM never reports a kill; it ends with the VM or the request.
func (f *fakePod) WaitOOM(ctx context.Context, _ string, _ uint64) (uint64, error) {
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-f.done:
		return 0, errors.New("VM gone")
	}
}

func (f *fakePod) HostMemoryStatus() sandbox.MemoryStatus {
	if f.mem != nil {
		cur := f.mem.currentMiB()
		return sandbox.MemoryStatus{Mechanism: memory.VirtioMem, GuestAtBootMiB: 256, MaxGuestMiB: 16384, GuestCurrentMiB: cur, GuestRequestedMiB: cur}
	}
	return sandbox.MemoryStatus{Mechanism: memory.None, GuestAtBootMiB: 256, MaxGuestMiB: 256, GuestCurrentMiB: 256, GuestRequestedMiB: 256}
}

// GuestAvailableMiB: the fake guest uses nothing.
func (f *fakePod) GuestAvailableMiB(context.Context) (int, error) {
	return f.HostMemoryStatus().GuestCurrentMiB, nil
}

func (f *fakePod) ResizeMemory(ctx context.Context, targetMiB int) (sandbox.MemoryStatus, error) {
	if m := f.mem; m != nil {
		m.resizing.Lock()
		defer m.resizing.Unlock()
		if targetMiB < m.currentMiB() && m.shrinkGate != nil {
			select {
			case <-m.shrinkGate:
			case <-ctx.Done():
				return f.HostMemoryStatus(), ctx.Err()
			}
		}
		m.mu.Lock()
		m.current = targetMiB
		m.mu.Unlock()
	}
	return f.HostMemoryStatus(), nil
}
func (f *fakePod) SetElasticBounds(int, int) {}
func (f *fakePod) ElasticEnabled() bool      { return false }
func (f *fakePod) SetMemoryFloor(func() int) {}

// fakeProc is a guest process: it runs once started and exits when
// killed (128+signal) or when the test ends it.
type fakeProc struct {
	mu      sync.Mutex
	started bool
	exit    chan sandbox.ExitStatus
}

func (p *fakeProc) Pid() uint32 { return 1 }
func (p *fakeProc) Start(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.started = true
	return nil
}
func (p *fakeProc) Wait(ctx context.Context) (sandbox.ExitStatus, error) {
	select {
	case st := <-p.exit:
		return st, nil
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	}
}
func (p *fakeProc) end(code uint32) {
	p.endWith(sandbox.ExitStatus{Code: code, ExitedAt: time.Now()})
}
func (p *fakeProc) endWith(st sandbox.ExitStatus) {
	select {
	case p.exit <- st:
	default:
	}
}
func (p *fakeProc) Kill(_ context.Context, sig syscall.Signal, _ bool) error {
	p.end(128 + uint32(sig))
	return nil
}
func (p *fakeProc) Resize(context.Context, uint32, uint32) error { return nil }

// recordingPublisher keeps the topics the shim published.
type recordingPublisher struct {
	mu     sync.Mutex
	topics []string
}

func (r *recordingPublisher) Publish(_ context.Context, topic string, _ events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, topic)
	return nil
}
func (r *recordingPublisher) Close() error { return nil }

// topicsUntil returns the topics published once topic is among them, or
// fails the test after 5 s.
func (r *recordingPublisher) topicsUntil(t *testing.T, topic string) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		got := slices.Clone(r.topics)
		r.mu.Unlock()
		if slices.Contains(got, topic) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not published; got %v", topic, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newTestService is the task service with a fake pod booted on the first
// create: what containerd talks to, minus the VM.
func newTestService(t *testing.T) (*service, *fakePod, context.Context) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	ctx, cancel := context.WithCancel(ctx)
	ctx, sd := shutdown.WithShutdown(ctx)
	t.Cleanup(func() { sd.Shutdown(); cancel() })
	cfg := config.Default()
	cfg.RunDir = t.TempDir()
	pod := newFakePod()
	s := &service{
		ctx: ctx, publisher: &recordingPublisher{}, shutdown: sd, events: make(chan event, 128),
		containers: map[string]*container{}, cfg: cfg,
	}
	s.boot = func(context.Context, *config.Config, sandbox.Options) (podVM, error) { return pod, nil }
	go s.forwardEvents()
	sd.RegisterCallback(s.closeEvents)
	return s, pod, ctx
}

// testBundle writes a bundle with a minimal OCI spec.
func testBundle(t *testing.T) string {
	t.Helper()
	return specBundle(t, specs.Spec{Version: specs.Version, Root: &specs.Root{Path: "rootfs"}, Process: &specs.Process{Args: []string{"/bin/true"}, Cwd: "/"}})
}

// specBundle writes a bundle, rootfs directory included, with spec.
func specBundle(t *testing.T, spec specs.Spec) string {
	t.Helper()
	dir := t.TempDir()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "rootfs"), 0o755)
	return dir
}
