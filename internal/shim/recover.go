package shim

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// UnaryInterceptor is picked up by containerd's shim runner for the task
// service's ttrpc server. A panic in a request (a shim bug, such as the nil
// configuration that once crashed Create) becomes an Internal error for
// that request, logged with its stack, instead of killing the shim and
// every container of the pod with it ("ttrpc: closed" to containerd).
func (t taskService) UnaryInterceptor() ttrpc.UnaryServerInterceptor { return recoverPanics }

func recoverPanics(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (_ interface{}, err error) {
	defer func() {
		if r := recover(); r != nil {
			log.G(ctx).WithField("method", info.FullMethod).Errorf("panic in the shim: %v\n%s", r, debug.Stack())
			err = errgrpc.ToGRPC(fmt.Errorf("%s: the shim hit a bug (%v); it keeps running, see its log: %w", info.FullMethod, r, errdefs.ErrInternal))
		}
	}()
	return method(ctx, unmarshal)
}
