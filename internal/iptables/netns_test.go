package iptables

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podidentity/podidentity/internal/emulator"
)

// Everything here happens inside network namespaces the test creates and deletes: the machine's
// own iptables, routes and sysctls are never touched.

var nsSeq atomic.Int32

func need(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: these tests need iproute2 and iptables (.ci/run installs them: apt-get install iproute2 iptables)", bin)
		}
	}
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a named network namespace, deleted when the test ends (even on failure).
func newNetns(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("nmit-%s-%d-%d", role, os.Getpid(), nsSeq.Add(1))
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	sh(t, "ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
	return name
}

// podPair makes a "node" and a "pod" namespace joined by a veth: the node is 10.231.<subnet>.1,
// the pod 10.231.<subnet>.2 with its default route through the node.
func podPair(t *testing.T, subnet int) (node, pod, podIP string) {
	t.Helper()
	node, pod = newNetns(t, "node"), newNetns(t, "pod")
	n := nsSeq.Add(1)
	vn, vp := fmt.Sprintf("nv%d", n), fmt.Sprintf("pv%d", n)
	nodeIP, podIP := fmt.Sprintf("10.231.%d.1", subnet), fmt.Sprintf("10.231.%d.2", subnet)
	sh(t, "ip", "link", "add", vn, "netns", node, "type", "veth", "peer", "name", vp, "netns", pod)
	sh(t, "ip", "netns", "exec", node, "ip", "addr", "add", nodeIP+"/24", "dev", vn)
	sh(t, "ip", "netns", "exec", node, "ip", "link", "set", vn, "up")
	sh(t, "ip", "netns", "exec", pod, "ip", "addr", "add", podIP+"/24", "dev", vp)
	sh(t, "ip", "netns", "exec", pod, "ip", "link", "set", vp, "up")
	sh(t, "ip", "netns", "exec", pod, "ip", "route", "add", "default", "via", nodeIP)
	return node, pod, podIP
}

// nsIPTables runs iptables inside the namespace through a wrapper script.
func nsIPTables(t *testing.T, ns string) Runner {
	t.Helper()
	p := filepath.Join(t.TempDir(), "iptables")
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s iptables \"$@\"\n", ns)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ipt, err := New(p)
	if err != nil {
		t.Fatal(err)
	}
	return ipt
}

type nsSysctl struct{ ns string }

func (s nsSysctl) Get(name string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", s.ns, "cat", filepath.Join("/proc/sys", name)).Output()
	return strings.TrimSpace(string(out)), err
}

func (s nsSysctl) Set(name, value string) error {
	return exec.Command("ip", "netns", "exec", s.ns, "sysctl", "-q", "-w", strings.ReplaceAll(name, "/", ".")+"="+value).Run()
}

// inNetns runs f on a thread switched into namespace ns; sockets f opens stay in ns.
func inNetns(t *testing.T, ns string, f func() error) error {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with this goroutine instead of serving others.
		return fmt.Errorf("returning to the original namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

func rules() Rules {
	return Rules{MetadataIP: "169.254.169.254", MetadataPort: 80, TargetIP: "127.0.0.1", TargetPort: 2579}
}

// dump is `iptables -t table -S chain` inside ns, one rule a line.
func dump(t *testing.T, ns, table, chain string) []string {
	out := sh(t, "ip", "netns", "exec", ns, "iptables", "-t", table, "-S", chain)
	return strings.Split(strings.TrimSpace(out), "\n")
}

func chainDump(t *testing.T, ns string) []string {
	out := sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S", Chain)
	return strings.Split(strings.TrimSpace(out), "\n")
}

// Exact upstream rules, jump at position 1, repair of tampering, idempotence and removal.
func TestEnsureAndRemove(t *testing.T) {
	need(t)
	ns := newNetns(t, "node")
	ipt := nsIPTables(t, ns)
	sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "RETURN")
	r := rules()
	changed, err := Ensure(ipt, r)
	if err != nil || !changed {
		t.Fatalf("first Ensure: changed=%v err=%v", changed, err)
	}
	if got := chainDump(t, ns); !slices.Equal(got, r.Expected()) {
		t.Fatalf("chain:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(r.Expected(), "\n"))
	}
	if want := "-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579"; r.Expected()[1] != want {
		t.Errorf("DNAT rule %q differs from upstream's %q", r.Expected()[1], want)
	}
	pre := strings.Split(strings.TrimSpace(sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S", "PREROUTING")), "\n")
	if len(pre) < 2 || pre[1] != "-A PREROUTING -j aad-metadata" {
		t.Fatalf("jump is not the first PREROUTING rule: %q", pre)
	}
	if changed, err := Ensure(ipt, r); err != nil || changed {
		t.Fatalf("second Ensure changed=%v err=%v, want no change", changed, err)
	}
	sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-I", Chain, "1", "-j", "RETURN")
	if changed, err := Ensure(ipt, r); err != nil || !changed {
		t.Fatalf("Ensure after tampering changed=%v err=%v", changed, err)
	}
	if got := chainDump(t, ns); !slices.Equal(got, r.Expected()) {
		t.Fatalf("not repaired: %q", got)
	}
	// A rule inserted before the jump (an ACCEPT would let pods reach IMDS) is not a reason to
	// leave the jump second: it moves back to the top, once, and the other rule stays.
	sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-I", "PREROUTING", "1", "-p", "tcp", "-j", "ACCEPT")
	if changed, err := Ensure(ipt, r); err != nil || !changed {
		t.Fatalf("Ensure with a rule before the jump: changed=%v err=%v", changed, err)
	}
	want := []string{"-P PREROUTING ACCEPT", "-A PREROUTING -j aad-metadata", "-A PREROUTING -p tcp -j ACCEPT", "-A PREROUTING -p udp -j RETURN"}
	if got := dump(t, ns, "nat", "PREROUTING"); !slices.Equal(got, want) {
		t.Fatalf("PREROUTING after the move:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The localnet guard: exact rule, first in INPUT, moved back there too.
	sh(t, "ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "udp", "-j", "ACCEPT")
	if changed, err := EnsureGuard(ipt); err != nil || !changed {
		t.Fatalf("first EnsureGuard: changed=%v err=%v", changed, err)
	}
	if got := dump(t, ns, "filter", GuardChain); !slices.Equal(got, ExpectedGuard()) {
		t.Fatalf("guard chain:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(ExpectedGuard(), "\n"))
	}
	if want := "-A " + GuardChain + " ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"; ExpectedGuard()[1] != want {
		t.Errorf("guard rule %q differs from kube-proxy's CVE-2020-8558 rule %q", ExpectedGuard()[1], want)
	}
	sh(t, "ip", "netns", "exec", ns, "iptables", "-I", "INPUT", "1", "-j", "ACCEPT")
	if changed, err := EnsureGuard(ipt); err != nil || !changed {
		t.Fatalf("EnsureGuard with an ACCEPT before the jump: changed=%v err=%v", changed, err)
	}
	want = []string{"-P INPUT ACCEPT", "-A INPUT -j " + GuardChain, "-A INPUT -j ACCEPT", "-A INPUT -p udp -j ACCEPT"}
	if got := dump(t, ns, "filter", "INPUT"); !slices.Equal(got, want) {
		t.Fatalf("INPUT after the move:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if changed, err := EnsureGuard(ipt); err != nil || changed {
		t.Fatalf("second EnsureGuard changed=%v err=%v, want no change", changed, err)
	}
	// 0.0.0.0 listener: DNAT still to loopback.
	if got := (Rules{MetadataIP: "169.254.169.254", MetadataPort: 80, TargetIP: "0.0.0.0", TargetPort: 2579}).Expected(); got[1] != r.Expected()[1] {
		t.Errorf("0.0.0.0 target: %q", got[1])
	}
	if err := Remove(ipt); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S", Chain).Run(); err == nil {
		t.Fatal("chain still exists after Remove")
	}
	if strings.Contains(sh(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S", "PREROUTING"), Chain) {
		t.Fatal("jump still exists after Remove")
	}
	if out := sh(t, "ip", "netns", "exec", ns, "iptables", "-S"); strings.Contains(out, GuardChain) {
		t.Fatalf("guard left after Remove:\n%s", out)
	}
	if err := Remove(ipt); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

// A pod namespace behind a veth calls 169.254.169.254: before the redirect the emulator's IMDS in
// the node namespace answers; after it, NMI's listener does (seeing the pod's address); an old
// connection's conntrack entry is deleted so it cannot keep reaching IMDS. When NMI stops the
// redirect stays (the pod's calls fail instead of reaching IMDS) unless it is an uninstall.
func TestRedirectKeptOnStopRemovedOnUninstall(t *testing.T) {
	need(t)
	node, pod, _ := podPair(t, 0)
	sh(t, "ip", "netns", "exec", node, "ip", "addr", "add", "169.254.169.254/32", "dev", "lo")
	// A stateful rule, as kube-proxy has, so that connections are tracked before NMI starts.
	sh(t, "ip", "netns", "exec", node, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")

	emu, err := emulator.New(emulator.Config{VirtualMachines: []emulator.VMConfig{{Name: "vm0"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	var imdsLn, nmiLn net.Listener
	if err := inNetns(t, node, func() (err error) {
		if imdsLn, err = net.Listen("tcp", "169.254.169.254:80"); err != nil {
			return err
		}
		nmiLn, err = net.Listen("tcp", "127.0.0.1:2579")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go func() { _ = emu.ServeIMDS("vm0", imdsLn) }()
	nmiSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "nmi saw "+r.RemoteAddr)
	})}
	go func() { _ = nmiSrv.Serve(nmiLn) }()
	t.Cleanup(func() { _ = nmiSrv.Close(); _ = imdsLn.Close() })

	// The pod's HTTP client dials from inside the pod namespace.
	podClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = inNetns(t, pod, func() error {
				c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
	get := func() string {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://169.254.169.254/metadata/instance?api-version=2021-02-01", nil)
		req.Header.Set("Metadata", "true")
		resp, err := podClient.Do(req)
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if body := get(); !strings.Contains(body, `"compute"`) {
		t.Fatalf("before the redirect the pod should reach IMDS: %s", body)
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
	r := rules()
	k := &Keeper{IPT: nsIPTables(t, node), Rules: r, Sysctl: nsSysctl{node}, Interval: time.Hour,
		Log:       testr.New(t),
		Conntrack: func() (uint, error) { return DeleteConntrack(nl, r) }}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	// The kept-alive connection from the first request is still open: its conntrack entry exists.
	flows, err := nl.ConntrackTableList(netlink.ConntrackTable, netlink.InetFamily(unix.AF_INET))
	if err != nil {
		t.Fatal(err)
	}
	if countTo(flows, r) == 0 {
		out, _ := exec.Command("ip", "netns", "exec", node, "conntrack", "-L").CombinedOutput()
		t.Logf("conntrack -L: %s; netlink saw %d flows", out, len(flows))
		t.Fatal("no tracked connection to the metadata address before the redirect; the conntrack part cannot be checked")
	}
	go func() { done <- k.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("keeper: %v", err)
	}
	if v, _ := (nsSysctl{node}).Get(routeLocalnet); v != "1" {
		t.Errorf("route_localnet is %q in the node namespace, want 1", v)
	}
	flows, _ = nl.ConntrackTableList(netlink.ConntrackTable, netlink.InetFamily(unix.AF_INET))
	if c := countTo(flows, r); c != 0 {
		t.Errorf("%d conntrack entries to the metadata address survived", c)
	}
	podClient.CloseIdleConnections()
	if body := get(); !strings.HasPrefix(body, "nmi saw 10.231.0.2:") {
		t.Fatalf("after the redirect the pod should reach NMI from its own address: %s", body)
	}
	// NMI stops (SIGTERM of a rolling update, no uninstall): the rules stay, and with nothing
	// listening on the DNAT target the pod's connection is refused instead of reaching IMDS.
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("keeper shutdown: %v", err)
	}
	if got := chainDump(t, node); !slices.Equal(got, r.Expected()) {
		t.Fatalf("after a plain stop the redirect must stay; chain is %q", got)
	}
	_ = nmiSrv.Close()
	podClient.CloseIdleConnections()
	if body := get(); !strings.HasPrefix(body, "error: ") || strings.Contains(body, `"compute"`) {
		t.Fatalf("with NMI away the pod must fail, not reach IMDS: %s", body)
	}

	// Uninstall: a keeper whose Uninstall answers remove takes both chains away on stop.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	k2 := *k
	k2.Uninstall = func(context.Context) (bool, string) { return true, "test: uninstall" }
	ready2 := make(chan struct{})
	go func() { done <- k2.Run(ctx2, func() { close(ready2) }) }()
	select {
	case <-ready2:
	case err := <-done:
		t.Fatalf("second keeper: %v", err)
	}
	cancel2()
	if err := <-done; err != nil {
		t.Fatalf("keeper shutdown on uninstall: %v", err)
	}
	for _, c := range [][]string{{"-t", "nat", "-S", Chain}, {"-t", "filter", "-S", GuardChain}} {
		if err := exec.Command("ip", append([]string{"netns", "exec", node, "iptables"}, c...)...).Run(); err == nil {
			t.Errorf("chain %s left behind after uninstall", c[3])
		}
	}
	podClient.CloseIdleConnections()
	if body := get(); !strings.Contains(body, `"compute"`) {
		t.Fatalf("after uninstall the pod reaches IMDS again: %s", body)
	}
}

func countTo(flows []*netlink.ConntrackFlow, r Rules) int {
	n := 0
	for _, f := range flows {
		if f.Forward.DstIP.Equal(net.ParseIP(r.MetadataIP)) && f.Forward.DstPort == uint16(r.MetadataPort) {
			n++
		}
	}
	return n
}
