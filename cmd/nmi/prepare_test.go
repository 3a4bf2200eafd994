package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/iptables"
)

// --prepare-node, as the chart's init container runs it: this test binary runs as `nmi
// --prepare-node` inside a network namespace the test creates (route_localnet is 0 there, as on a
// node without kube-proxy), never in the machine's own. Afterwards the guard is first in INPUT,
// route_localnet is 1, the nat table has no NMI chain, and the log says what was done.
func TestPrepareNodeMode(t *testing.T) {
	if os.Getenv("NMI_TEST_PREPARE_CHILD") == "1" {
		os.Args = []string{"nmi", "--prepare-node"}
		main()
		os.Exit(0)
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: this test needs iproute2 and iptables (apt-get install iproute2 iptables)", bin)
		}
	}
	ns := fmt.Sprintf("nmit-prepare-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	inNS := func(args ...string) string {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	const sysctl = "/proc/sys/net/ipv4/conf/all/route_localnet"
	if v := inNS("cat", sysctl); v != "0" {
		t.Fatalf("setup: route_localnet in a new namespace is %q, want 0", v)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestPrepareNodeMode$")
	cmd.Env = append(os.Environ(), "NMI_TEST_PREPARE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nmi --prepare-node: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "turned on net.ipv4.conf.all.route_localnet") {
		t.Errorf("the log does not say route_localnet was turned on:\n%s", out)
	}
	if v := inNS("cat", sysctl); v != "1" {
		t.Errorf("route_localnet is %q after --prepare-node, want 1", v)
	}
	input := strings.Split(inNS("iptables", "-S", "INPUT"), "\n")
	if len(input) < 2 || input[1] != "-A INPUT -j "+iptables.GuardChain {
		t.Errorf("the guard's jump is not first in INPUT:\n%s", strings.Join(input, "\n"))
	}
	if got := inNS("iptables", "-S", iptables.GuardChain); got != strings.Join(iptables.ExpectedGuard(), "\n") {
		t.Errorf("guard chain:\n%s\nwant:\n%s", got, strings.Join(iptables.ExpectedGuard(), "\n"))
	}
	if nat := inNS("iptables", "-t", "nat", "-S"); strings.Contains(nat, iptables.Chain) {
		t.Errorf("--prepare-node installed NMI's nat chain (the DNAT is NMI's own):\n%s", nat)
	}
}

// The two one-shot modes exclude each other, as a command-line error (exit code 2).
func TestPrepareNodeAndCleanupExclusive(t *testing.T) {
	err := run(context.Background(), []string{"--prepare-node", "--cleanup-iptables"}, noEnv, io.Discard)
	var ce cmdError
	if !errors.As(err, &ce) || ce.code != 2 || !strings.Contains(err.Error(), "--prepare-node") {
		t.Errorf("--prepare-node --cleanup-iptables: %v (%+v), want exit code 2 naming both", err, ce)
	}
}
