package nmi

import (
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/client-go/rest"
)

// apiProxy is a TCP proxy on 127.0.0.1 between NMI and the API server that a test can cut
// (every open connection closed, new ones refused) and restore, as an API server restart or a
// network cut would. It counts connections and the bytes NMI sends, so a test can tell that NMI
// made no request (TLS hides the requests themselves).
type apiProxy struct {
	t        testing.TB
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}

	accepted atomic.Int64 // connections accepted while not cut
	sent     atomic.Int64 // bytes from NMI to the API server
}

func newAPIProxy(t testing.TB, upstream *rest.Config) (*apiProxy, *rest.Config) {
	t.Helper()
	u, err := url.Parse(upstream.Host)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &apiProxy{t: t, ln: ln, upstream: u.Host, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { _ = ln.Close(); p.closeAll() })
	go p.serve()
	cfg := rest.CopyConfig(upstream)
	u.Host = ln.Addr().String()
	cfg.Host = u.String()
	return p, cfg
}

func (p *apiProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close() // refused: the client sees its connection reset at once
			continue
		}
		p.accepted.Add(1)
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go p.pipe(up, c, &p.sent)
		go p.pipe(c, up, nil)
	}
}

// pipe copies src to dst and closes both at the end.
func (p *apiProxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if count != nil {
				count.Add(int64(n))
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.t.Logf("api proxy: %v", err)
			}
			break
		}
	}
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
	_ = dst.Close()
	_ = src.Close()
}

// Cut closes every open connection and refuses new ones until Restore.
func (p *apiProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
	p.closeAll()
}

// Restore accepts connections again.
func (p *apiProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

func (p *apiProxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}
