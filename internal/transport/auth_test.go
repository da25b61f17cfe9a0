package transport

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

func TestAgentAcceptsOnlyStreamsWithTheSandboxSecret(t *testing.T) {
	defer func(d time.Duration) { tokenTimeout = d }(tokenTimeout)
	tokenTimeout = time.Second // a peer that stops short is dropped after this
	sock, mux := fakeQEMU(t)
	raw, err := mux.Listen(AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{7}, TokenBytes)
	l := RequireToken(raw, secret)
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	plain := NewSerialDialer(sock)
	defer plain.Close()

	// No secret, a wrong one, a short one: each is closed unread.
	wrong := bytes.Repeat([]byte{8}, TokenBytes)
	for name, prefix := range map[string][]byte{"none": []byte("GET / HTTP/1.0\r\n\r\n" + string(make([]byte, TokenBytes))), "wrong": wrong, "short": secret[:10]} {
		c, err := plain.Dial(ctx, AgentPort)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(prefix)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("%s: stream not closed by the agent: %v", name, err)
		}
		c.Close()
	}
	select {
	case c := <-accepted:
		t.Fatalf("agent accepted a stream without the secret: %v", c)
	default:
	}

	// The fake QEMU serves one host session at a time: same session.
	good := WithToken(plain, secret)
	c, err := good.Dial(ctx, AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	select {
	case s := <-accepted:
		buf := make([]byte, 5)
		if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "hello" {
			t.Fatalf("agent read %q, %v after the secret", buf, err)
		}
	case <-ctx.Done():
		t.Fatal("agent did not accept the stream with the secret")
	}
}
