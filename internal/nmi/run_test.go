package nmi

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A pod that opens a connection and sends its request headers slowly (slow loris) is cut off
// once ReadHeaderTimeout passes, instead of holding a connection and a goroutine: through
// nmi.Run, the token server cmd/nmi runs.
func TestSlowHeadersAreCutOff(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Half the headers at once, then one byte a second: never the blank line that ends them.
	if _, err := io.WriteString(c, "GET /metadata/identity/oauth2/token?resource=x HTTP/1.1\r\nHost: nmi\r\n"); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		for range time.Tick(time.Second) {
			if _, err := io.WriteString(c, "X"); err != nil {
				return
			}
		}
	}()
	// The server must close before its (longer) whole-request ReadTimeout would: halfway between
	// the two, so that without ReadHeaderTimeout this read times out.
	_ = c.SetReadDeadline(time.Now().Add(readHeaderTimeout + (readTimeout-readHeaderTimeout)/2))
	_, err = io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server still held a connection with unfinished headers after %s (ReadHeaderTimeout %s)", readHeaderTimeout+(readTimeout-readHeaderTimeout)/2, readHeaderTimeout)
	}
	_ = c.Close()
	<-closed
}

// Oversized headers are refused with 431, never read into memory.
func TestHugeHeadersAreRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c, err := net.Dial("tcp", h.addr)
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
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d, want 431", resp.StatusCode)
	}
}

// A request that waits the whole assignment budget (cmd/nmi's defaults: 16+4 intervals of 5 s)
// must not be cut by the server's write timeout before NMI answers.
func TestWriteTimeoutCoversTheAssignmentWait(t *testing.T) {
	cfg := Config{RetryAttemptsForCreated: 16, RetryAttemptsForAssigned: 4, FindIdentityRetryInterval: 5 * time.Second}
	budget := 20 * 5 * time.Second
	if hs := tokenServer(nil, cfg); hs.WriteTimeout <= budget {
		t.Errorf("write timeout %s does not cover the %s wait budget", hs.WriteTimeout, budget)
	}
}

// New refuses a Config Run cannot start from, naming what to set.
func TestNewNamesWhatIsMissing(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "--node") {
		t.Errorf("no node: %v", err)
	}
	if _, err := New(Config{NodeName: "n"}); !errors.Is(err, ErrNoRestConfig) {
		t.Errorf("no rest config: %v, want ErrNoRestConfig", err)
	}
	if _, err := New(Config{NodeName: "n", RestConfig: env.Config}); err == nil || !strings.Contains(err.Error(), "ListenAddress") {
		t.Errorf("no listen address: %v", err)
	}
}
