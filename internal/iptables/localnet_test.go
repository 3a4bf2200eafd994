package iptables

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// route_localnet without the guard lets a pod reach whatever listens on the node's 127.0.0.1
// (CVE-2020-8558 class). The "pod" here sends packets addressed to 127.0.0.0/8 to the node, as
// an attacker with NET_ADMIN in its own namespace (or raw sockets) can. With only the redirect
// and route_localnet (what NMI used to install) it reaches a node-local server; once the Keeper
// runs, the same pod still reaches NMI through the DNAT but no longer that server.
func TestLocalnetGuardBlocksPodsFromNodeLoopback(t *testing.T) {
	need(t)
	node, pod, podIP := podPair(t, 1)
	// The attacker's namespace routes 127.0.0.0/8 to the node instead of its own loopback.
	sh(t, "ip", "netns", "exec", pod, "ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
	sh(t, "ip", "netns", "exec", pod, "ip", "route", "add", "127.0.0.0/8", "via", "10.231.1.1", "src", podIP)
	sh(t, "ip", "netns", "exec", pod, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1")

	var nmiLn, localLn net.Listener
	if err := inNetns(t, node, func() (err error) {
		if nmiLn, err = net.Listen("tcp", "127.0.0.1:2579"); err != nil {
			return err
		}
		// Stands for any node-local service: kubelet's read-only port, a debug endpoint, ...
		localLn, err = net.Listen("tcp", "127.0.0.1:2580")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for name, ln := range map[string]net.Listener{"nmi": nmiLn, "node-local service": localLn} {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) })}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	get := func(url string) string {
		t.Helper()
		c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				err = inNetns(t, pod, func() error {
					c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
					return err
				})
				return c, err
			}}}
		resp, err := c.Get(url)
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	ipt, r := nsIPTables(t, node), rules()
	// What NMI installed before the guard existed: the hole is real in this setup.
	if _, err := Ensure(ipt, r); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureRouteLocalnet(nsSysctl{node}, r); err != nil {
		t.Fatal(err)
	}
	if body := get("http://127.0.0.1:2580/"); body != "node-local service" {
		t.Fatalf("setup: without the guard the pod should reach the node's loopback service, got %q", body)
	}

	h, err := netns.GetFromName(node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	k := &Keeper{IPT: ipt, Rules: r, Sysctl: nsSysctl{node}, Interval: time.Hour, Log: testr.New(t),
		Conntrack: func() (uint, error) { return DeleteConntrack(nl, r) }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- k.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("keeper: %v", err)
	}
	if body := get("http://127.0.0.1:2580/"); !strings.HasPrefix(body, "error: ") {
		t.Errorf("with the guard the pod still reaches the node's loopback service: %q", body)
	}
	if body := get("http://127.0.0.1:2579/"); !strings.HasPrefix(body, "error: ") {
		t.Errorf("with the guard the pod still reaches NMI's loopback port directly: %q", body)
	}
	if body := get("http://169.254.169.254/metadata/identity/oauth2/token"); body != "nmi" {
		t.Errorf("the DNAT to NMI must still work through the guard, got %q", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
