package iptables

import (
	"fmt"
	"strings"
)

// The localnet guard. NMI turns on route_localnet so that pod traffic DNAT'ed to 127.0.0.1 is
// delivered; without a guard that also lets a pod send packets addressed to 127.0.0.0/8 to the
// node and reach every service listening on the node's loopback (the CVE-2020-8558 class). The
// nat table cannot drop, so the guard is a filter chain of NMI's own, jumped to first from INPUT,
// with kube-proxy's rule for that CVE: loopback-destined traffic from a non-loopback source is
// dropped unless conntrack knows it as DNAT'ed (NMI's redirect) or part of an existing flow.
const (
	// GuardChain is the filter chain NMI owns.
	GuardChain  = "aad-metadata-localnet"
	filterTable = "filter"
	// Input is where the guard's jump goes (first rule).
	Input = "INPUT"
)

func guardSpec() []string {
	return []string{"!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"}
}

// ExpectedGuard is the guard chain as `iptables -t filter -S aad-metadata-localnet` prints it.
func ExpectedGuard() []string {
	return []string{"-N " + GuardChain, "-A " + GuardChain + " " + strings.Join(guardSpec(), " ")}
}

// EnsureGuard makes the guard chain exactly as expected and its jump the first rule of INPUT (an
// ACCEPT before it would void it); it reports whether it changed anything.
func EnsureGuard(ipt Runner) (changed bool, err error) {
	changed, err = ensureChain(ipt, filterTable, GuardChain, ExpectedGuard(), [][]string{guardSpec()})
	if err != nil {
		return changed, fmt.Errorf("localnet guard: %w", err)
	}
	moved, err := ensureJumpFirst(ipt, filterTable, Input, GuardChain)
	if err != nil {
		return changed, fmt.Errorf("localnet guard: %w", err)
	}
	return changed || moved, nil
}
