package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
)

// The management socket (<sandbox dir>/mgmt.sock) is how `berth status`
// and `berth resize` reach a sandbox, whichever process owns it (a `berth
// run`, or a containerd shim): the owner serves a small HTTP API on it, as
// Kata's shim serves its management socket. It lives and dies with the
// sandbox directory.

const mgmtSocketName = "mgmt.sock"

// Status is what `berth status` shows.
type Status struct {
	ID            string       `json:"id"`
	VMMPid        int          `json:"vmmPid"`
	KernelRelease string       `json:"kernelRelease"`
	AgentVersion  string       `json:"agentVersion"`
	Memory        MemoryStatus `json:"memory"`
}

// Status reports the sandbox.
func (s *Sandbox) Status(ctx context.Context) Status {
	return Status{ID: s.id, VMMPid: s.vmm.Pid(), KernelRelease: s.info.GetKernelRelease(),
		AgentVersion: s.info.GetAgentVersion(), Memory: s.MemoryStatus(ctx)}
}

type resizeRequest struct {
	MemoryMiB int `json:"memoryMiB"`
}

type apiError struct {
	Error string `json:"error"`
}

// serveManagement starts the management API; it stops when l is closed.
func (s *Sandbox) serveManagement() (io.Closer, error) {
	l, err := net.Listen("unix", s.path(mgmtSocketName))
	if err != nil {
		return nil, fmt.Errorf("management socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Status(r.Context()))
	})
	mux.HandleFunc("POST /memory", func(w http.ResponseWriter, r *http.Request) {
		var req resizeRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{"decode request: " + err.Error()})
			return
		}
		err := s.checkMemoryFloor(req.MemoryMiB)
		var st MemoryStatus
		if err == nil {
			st, err = s.ResizeMemory(r.Context(), req.MemoryMiB)
			if err == nil || errors.Is(err, ErrPartialResize) {
				s.setManualSize(req.MemoryMiB)
			}
		}
		switch {
		case err == nil:
			writeJSON(w, http.StatusOK, st)
		case errdefs.IsInvalidArgument(err):
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		case errors.Is(err, ErrPartialResize):
			writeJSON(w, http.StatusConflict, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
		}
	})
	mux.HandleFunc("POST /debug/exec", func(w http.ResponseWriter, r *http.Request) {
		var req debugExecRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{"decode request: " + err.Error()})
			return
		}
		res, err := s.DebugExec(r.Context(), req.Args, req.Stdin, req.TimeoutSeconds)
		switch {
		case err == nil:
			writeJSON(w, http.StatusOK, res)
		case errdefs.IsInvalidArgument(err):
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		case errdefs.IsFailedPrecondition(err):
			writeJSON(w, http.StatusForbidden, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	return srv, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Client talks to a sandbox's management socket.
type Client struct {
	http *http.Client
	id   string
}

// Connect returns a client for sandbox id under runDir, or an error
// wrapping errdefs.ErrNotFound when no such sandbox runs.
func Connect(runDir, id string) (*Client, error) {
	if err := validateID(id); err != nil {
		return nil, err
	}
	sock := filepath.Join(Dir(runDir, id), mgmtSocketName)
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("sandbox %q is not running here (no %s): %w", id, sock, errdefs.ErrNotFound)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &Client{http: &http.Client{Transport: tr}, id: id}, nil
}

// Status fetches the sandbox's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/status", nil, &st)
	return st, err
}

// ResizeMemory asks the sandbox to change its memory to sizeMiB.
func (c *Client) ResizeMemory(ctx context.Context, sizeMiB int) (MemoryStatus, error) {
	var st MemoryStatus
	err := c.do(ctx, http.MethodPost, "/memory", resizeRequest{MemoryMiB: sizeMiB}, &st)
	return st, err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://sandbox"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("sandbox %q: %w", c.id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e apiError
		json.NewDecoder(resp.Body).Decode(&e)
		switch resp.StatusCode {
		case http.StatusBadRequest:
			return remoteError{e.Error, errdefs.ErrInvalidArgument}
		case http.StatusConflict:
			return remoteError{e.Error, ErrPartialResize}
		case http.StatusForbidden:
			return remoteError{e.Error, errdefs.ErrFailedPrecondition}
		}
		return errors.New(e.Error)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// remoteError carries the server's message as it is, classified.
type remoteError struct {
	msg  string
	kind error
}

func (e remoteError) Error() string { return e.msg }
func (e remoteError) Unwrap() error { return e.kind }
