package shim

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
)

func TestPanicBecomesInternalError(t *testing.T) {
	var s *service // nil: any method dereferencing it panics
	method := func(ctx context.Context, _ func(interface{}) error) (interface{}, error) {
		return s.vmmPid(), nil
	}
	_, err := recoverPanics(context.Background(), func(interface{}) error { return nil },
		&ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v2.Task/Create"}, method)
	if !errdefs.IsInternal(errgrpc.ToNative(err)) || !strings.Contains(err.Error(), "Task/Create") {
		t.Fatalf("err = %v, want an Internal error naming the method", err)
	}
	ok := func(ctx context.Context, _ func(interface{}) error) (interface{}, error) { return 7, nil }
	if v, err := recoverPanics(context.Background(), nil, &ttrpc.UnaryServerInfo{}, ok); err != nil || v != 7 {
		t.Fatalf("%v %v", v, err)
	}
}
