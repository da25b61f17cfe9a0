package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moby/spdystream"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// dialSPDY upgrades a connection to containerd's CRI streaming server at
// url (what CRI's Exec, Attach and PortForward return) to SPDY/3.1 with
// the given stream protocol, as kubectl does, and serves it until the test
// ends.
func dialSPDY(t *testing.T, url, protocol string) *spdystream.Connection {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", req.URL.Host, 10*time.Second)
	if err != nil {
		t.Fatalf("dial the streaming server: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Set("X-Stream-Protocol-Version", protocol)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade to SPDY (%s): %v %v", protocol, err, resp)
	}
	sc, err := spdystream.NewConnection(&bufferedConn{Conn: conn, r: br}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// streamResult is what kubectl exec or attach shows: the program's output
// and how it ended (the v4 protocol's status: "Success", or the failure's
// message).
type streamResult struct {
	stdout, stderr, status string
}

// criStream does what `kubectl exec -i` and `kubectl attach -i` do with the
// URL CRI's Exec or Attach returns (v4.channel.k8s.io over SPDY): it opens
// the error, stdin, stdout and stderr streams, writes stdin, closes it
// (kubectl's EOF when its own input ends), and returns once the server has
// closed the output and reported the status.
func criStream(t *testing.T, url string, stdin []byte) streamResult {
	t.Helper()
	sc := dialSPDY(t, url, "v4.channel.k8s.io")
	open := func(kind string) *spdystream.Stream {
		s, err := sc.CreateStream(http.Header{"Streamtype": {kind}}, nil, false)
		if err != nil {
			t.Fatalf("%s stream: %v", kind, err)
		}
		return s
	}
	errS, in, out, serr := open("error"), open("stdin"), open("stdout"), open("stderr")
	read := func(s io.Reader) <-chan string {
		c := make(chan string, 1)
		go func() { b, _ := io.ReadAll(s); c <- string(b) }()
		return c
	}
	outC, errC, statusC := read(out), read(serr), read(errS)
	go func() {
		in.Write(stdin)
		in.Close()
	}()
	var r streamResult
	deadline := time.After(2 * time.Minute)
	for i, dst := range []*string{&r.stdout, &r.stderr, &r.status} {
		select {
		case *dst = <-[]<-chan string{outC, errC, statusC}[i]:
		case <-deadline:
			t.Fatalf("the stream did not end within 2 minutes (stdout so far %q)", r.stdout)
		}
	}
	var st struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(r.status), &st); err == nil {
		r.status = st.Status
		if st.Status != "Success" {
			r.status = st.Message
		}
	}
	return r
}

// execStream runs cmd in a container through CRI's streaming Exec with
// stdin, as `kubectl exec -i` does.
func (c *criClient) execStream(t *testing.T, id string, stdin []byte, cmd ...string) streamResult {
	t.Helper()
	resp, err := c.rt.Exec(criCtx(t, time.Minute), &cri.ExecRequest{ContainerId: id, Cmd: cmd, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatalf("Exec %v: %v", cmd, err)
	}
	return criStream(t, resp.Url, stdin)
}

func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

// tarOf is a tar stream of files (name → content), as `kubectl cp` sends.
func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestCRIStdinArrivesWholeThenEOF: what `kubectl cp`, `kubectl exec -i`
// and `kubectl attach -i` pipe into a Berth container reaches the program
// whole and then ends, as under runc. containerd's CRI writes the last
// byte into the stdin FIFO and calls CloseIO right after; the shim used to
// close stdin in the guest at once, and the program read EOF before the
// data (md5sum saw nothing, tar read "short read").
func TestCRIStdinArrivesWholeThenEOF(t *testing.T) {
	c := newCRI(t)
	defer assertNoLeaks(t)
	random := make([]byte, 1<<20)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"cp/a.txt": "copied-a\n", "cp/sub/b.txt": strings.Repeat("copied-b ", 5000) + "\n"}
	archive := tarOf(t, files)
	for _, handler := range []string{"runc", criHandler} {
		t.Run(handler, func(t *testing.T) {
			pod := c.runPodWith(t, "stdin-"+handler, handler, nil)
			defer c.removePod(t, pod.id)
			id, _ := c.createContainer(t, pod, "sleep", "sleep", "100000")
			c.startContainer(t, id)

			// kubectl exec -i: 1 MiB of random bytes, each one counted.
			if r := c.execStream(t, id, random, "md5sum"); !strings.HasPrefix(r.stdout, md5Hex(random)+" ") || r.status != "Success" {
				t.Errorf("exec -i md5sum of 1 MiB: stdout %q stderr %q status %q, want %s", r.stdout, r.stderr, r.status, md5Hex(random))
			}
			// kubectl cp: a tar stream unpacked in the container.
			if r := c.execStream(t, id, archive, "tar", "xf", "-", "-C", "/tmp"); r.status != "Success" {
				t.Errorf("exec -i tar xf -: stderr %q status %q", r.stderr, r.status)
			}
			got := c.execOut(t, id, "sh", "-c", "md5sum /tmp/cp/a.txt /tmp/cp/sub/b.txt")
			for name, content := range files {
				if !strings.Contains(got, md5Hex([]byte(content))+"  /tmp/"+name) {
					t.Errorf("after kubectl cp, %s in the container: md5sum says %q, want %s", name, got, md5Hex([]byte(content)))
				}
			}
			// An empty stdin is EOF at once.
			if r := c.execStream(t, id, nil, "wc", "-c"); strings.TrimSpace(r.stdout) != "0" || r.status != "Success" {
				t.Errorf("exec -i wc -c of nothing: stdout %q status %q, want 0", r.stdout, r.status)
			}

			// kubectl attach -i to a container with stdin and stdinOnce
			// (kubectl run -i --rm): the init process gets the bytes, then
			// EOF, and exits.
			aid, _ := c.createContainerWith(t, pod, "md5", func(cc *cri.ContainerConfig) {
				cc.Stdin, cc.StdinOnce = true, true
			}, "md5sum")
			c.startContainer(t, aid)
			resp, err := c.rt.Attach(criCtx(t, time.Minute), &cri.AttachRequest{ContainerId: aid, Stdin: true, Stdout: true, Stderr: true})
			if err != nil {
				t.Fatalf("Attach: %v", err)
			}
			r := criStream(t, resp.Url, random)
			st := c.waitExited(t, aid, time.Minute)
			if !strings.HasPrefix(r.stdout, md5Hex(random)+" ") || st.ExitCode != 0 {
				t.Errorf("attach -i to md5sum: stdout %q, exit %d; want %s and 0", r.stdout, st.ExitCode, md5Hex(random))
			}
		})
	}
}
