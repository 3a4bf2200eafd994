// Package relay forwards TCP connections accepted inside a sandbox namespace to the same
// 127.0.0.1 port in the machine's namespace.
//
// This is how node and MIC namespaces reach the apiserver and the emulator's ARM/AAD without
// any route between the machine's network and the sandbox's: the listener exists only inside the
// namespace's loopback, and only the named ports are relayed. Because the address is the same
// (127.0.0.1:<port>) on both sides, kubeconfigs, URLs and TLS certificates are identical inside
// and outside the sandbox.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/sandbox/netns"
)

// Relay serves one or more ports inside one namespace.
type Relay struct {
	log logr.Logger
	lns []net.Listener
	wg  sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

// Start listens on 127.0.0.1:<port> inside namespace ns for every port and forwards each
// connection to 127.0.0.1:<port> outside.
func Start(log logr.Logger, ns string, ports ...int) (*Relay, error) {
	r := &Relay{log: log.WithValues("netns", ns), conns: map[net.Conn]struct{}{}}
	for _, port := range ports {
		addr := "127.0.0.1:" + strconv.Itoa(port)
		ln, err := netns.Listen(ns, addr)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("relay for %s: %w", addr, err)
		}
		r.lns = append(r.lns, ln)
		r.wg.Add(1)
		go r.serve(ln, addr)
	}
	return r, nil
}

func (r *Relay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if add {
		if r.done {
			return false
		}
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
	return true
}

func (r *Relay) serve(ln net.Listener, target string) {
	defer r.wg.Done()
	for {
		in, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Error(err, "relay accept failed", "addr", target)
			}
			return
		}
		go r.pipe(in, target)
	}
}

func (r *Relay) pipe(in net.Conn, target string) {
	var d net.Dialer
	out, err := d.DialContext(context.Background(), "tcp4", target)
	if err != nil {
		r.log.V(1).Info("relay dial failed", "target", target, "err", err.Error())
		in.Close()
		return
	}
	if !r.track(in, true) || !r.track(out, true) {
		in.Close()
		out.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}
	go cp(out, in)
	go cp(in, out)
	wg.Wait()
	in.Close()
	out.Close()
	r.track(in, false)
	r.track(out, false)
}

// Close stops accepting and closes every relayed connection.
func (r *Relay) Close() {
	for _, ln := range r.lns {
		ln.Close()
	}
	r.mu.Lock()
	r.done = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
