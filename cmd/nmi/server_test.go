package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func startTokenServer(t *testing.T) (addr string, o options) {
	t.Helper()
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse([]string{"--node=n1"}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := tokenServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "{}") }), o.config())
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return ln.Addr().String(), o
}

// A pod that opens a connection and never finishes its request headers is cut off instead of
// holding a connection (and a goroutine) forever.
func TestSlowClientIsDisconnected(t *testing.T) {
	addr, _ := startTokenServer(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /metadata/identity/oauth2/token?resource=x HTTP/1.1\r\nHost: nmi\r\n"); err != nil {
		t.Fatal(err)
	}
	// The safety deadline only catches a server that never closes; the server's own limit is 5 s.
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err = io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept a half-sent request open for a minute")
	}
}

// Oversized headers are refused with 431, never read into memory.
func TestHugeHeadersAreRefused(t *testing.T) {
	addr, _ := startTokenServer(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /metadata/identity/oauth2/token HTTP/1.1\r\nHost: nmi\r\nMetadata: true\r\nX-Pad: " + strings.Repeat("a", 64<<10) + "\r\n\r\n"
	_, _ = io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d, want 431", resp.StatusCode)
	}
}

// A request that waits the whole assignment budget (16+4 intervals of 5 s by default) must not be
// cut by the server's write timeout before NMI answers.
func TestWriteTimeoutCoversTheAssignmentWait(t *testing.T) {
	_, o := startTokenServer(t)
	cfg := o.config()
	budget := cfg.FindIdentityRetryInterval * time.Duration(cfg.RetryAttemptsForCreated+cfg.RetryAttemptsForAssigned)
	if hs := tokenServer(nil, cfg); hs.WriteTimeout <= budget {
		t.Errorf("write timeout %s does not cover the %s wait budget", hs.WriteTimeout, budget)
	}
}
