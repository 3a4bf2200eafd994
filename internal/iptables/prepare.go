package iptables

import (
	"errors"
	"fmt"
	"slices"
)

// ErrGuardMissing is returned by PrepareNode when the guard chain or its jump is not in place
// after EnsureGuard said it was: route_localnet is then left alone.
var ErrGuardMissing = errors.New("localnet guard not in place")

// Prepared is what PrepareNode did.
type Prepared struct {
	// GuardChanged: the guard chain or its jump was created, rewritten or moved first.
	GuardChanged bool
	// LocalnetChanged: route_localnet was 0 and has been set to 1.
	LocalnetChanged bool
	// LocalnetNeeded is false when the DNAT target is not loopback: route_localnet is not
	// touched then.
	LocalnetNeeded bool
}

// PrepareNode is `nmi --prepare-node`, run privileged before NMI on nodes where NMI itself cannot
// write /proc/sys: it installs (or repairs) the localnet guard with the same code as the Keeper,
// checks that the guard is really there, and only then turns route_localnet on. The order is the
// point: a node with route_localnet=1 and no guard lets pods reach the node's loopback services.
// It never installs the DNAT: that stays the Keeper's, which also knows when to remove it.
func PrepareNode(ipt Runner, s Sysctl, r Rules) (Prepared, error) {
	var p Prepared
	if err := r.Validate(); err != nil {
		return p, err
	}
	changed, err := EnsureGuard(ipt)
	p.GuardChanged = changed
	if err != nil {
		return p, fmt.Errorf("%w; route_localnet was not changed", err)
	}
	if err := checkGuard(ipt); err != nil {
		return p, err
	}
	p.LocalnetNeeded = r.needsLocalnet()
	if !p.LocalnetNeeded {
		return p, nil
	}
	p.LocalnetChanged, err = setRouteLocalnet(s)
	if err != nil {
		return p, fmt.Errorf("%w (the localnet guard is installed; run `nmi --prepare-node` privileged, as the chart's nmi.prepareNode init container does, or set net.ipv4.conf.all.route_localnet=1 on the node)", err)
	}
	return p, nil
}

// checkGuard reads back the guard chain and INPUT: a Runner that reports success without
// applying the rules (a wrong backend, a wrapper) must not lead to route_localnet without guard.
func checkGuard(ipt Runner) error {
	got, err := ipt.List(filterTable, GuardChain)
	if err != nil {
		return fmt.Errorf("%w: listing %s/%s: %v; route_localnet was not changed", ErrGuardMissing, filterTable, GuardChain, err)
	}
	if !slices.Equal(got, ExpectedGuard()) {
		return fmt.Errorf("%w: %s/%s is %q, want %q; route_localnet was not changed", ErrGuardMissing, filterTable, GuardChain, got, ExpectedGuard())
	}
	input, err := ipt.List(filterTable, Input)
	if err != nil {
		return fmt.Errorf("%w: listing %s/%s: %v; route_localnet was not changed", ErrGuardMissing, filterTable, Input, err)
	}
	if len(input) < 2 || input[1] != "-A "+Input+" -j "+GuardChain {
		return fmt.Errorf("%w: the jump to %s is not the first rule of %s/%s; route_localnet was not changed", ErrGuardMissing, GuardChain, filterTable, Input)
	}
	return nil
}
