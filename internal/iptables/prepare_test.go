package iptables

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// guardWatch is the Sysctl of namespace ns that, at the moment route_localnet is written, records
// whether the guard chain and its jump (first in INPUT) were already in place there.
type guardWatch struct {
	nsSysctl
	t                 *testing.T
	sets              int
	guardedAtFirstSet bool
}

func (g *guardWatch) Set(name, value string) error {
	g.t.Helper()
	if g.sets == 0 {
		input := dump(g.t, g.ns, filterTable, Input)
		g.guardedAtFirstSet = slices.Equal(dump(g.t, g.ns, filterTable, GuardChain), ExpectedGuard()) &&
			len(input) > 1 && input[1] == "-A INPUT -j "+GuardChain
	}
	g.sets++
	return g.nsSysctl.Set(name, value)
}

// `nmi --prepare-node` on a node whose route_localnet is 0 (a fresh namespace): the guard is in
// place before the sysctl flips, the sysctl ends at 1, the DNAT is left to NMI, and a second run
// changes nothing.
func TestPrepareNodeGuardBeforeLocalnet(t *testing.T) {
	need(t)
	node := newNetns(t, "prep")
	s := &guardWatch{nsSysctl: nsSysctl{node}, t: t}
	if v, err := s.Get(routeLocalnet); err != nil || v != "0" {
		t.Fatalf("setup: route_localnet in a new namespace is %q (%v), want 0", v, err)
	}
	ipt := nsIPTables(t, node)
	p, err := PrepareNode(ipt, s, rules())
	if err != nil {
		t.Fatal(err)
	}
	if !p.GuardChanged || !p.LocalnetChanged || !p.LocalnetNeeded {
		t.Errorf("PrepareNode reported %+v, want the guard and route_localnet changed", p)
	}
	if s.sets != 1 || !s.guardedAtFirstSet {
		t.Errorf("route_localnet written %d times, guard in place at the first write: %v; want once, after the guard", s.sets, s.guardedAtFirstSet)
	}
	if v, _ := s.Get(routeLocalnet); v != "1" {
		t.Errorf("route_localnet is %q after PrepareNode, want 1", v)
	}
	if nat := sh(t, "ip", "netns", "exec", node, "iptables", "-t", "nat", "-S"); strings.Contains(nat, Chain) {
		t.Errorf("PrepareNode installed the nat chain, which is NMI's:\n%s", nat)
	}
	p, err = PrepareNode(ipt, s, rules())
	if err != nil || p.GuardChanged || p.LocalnetChanged {
		t.Errorf("second PrepareNode: %+v, %v; want no change", p, err)
	}
}

// failingInsert is the namespace's iptables refusing every insert into filter INPUT, as when the
// guard's jump cannot be added.
type failingInsert struct{ Runner }

var errRefused = errors.New("iptables: refused by the test")

func (f failingInsert) Insert(table, chain string, pos int, rulespec ...string) error {
	if table == filterTable && chain == Input {
		return errRefused
	}
	return f.Runner.Insert(table, chain, pos, rulespec...)
}

// noop reports success for every change and applies none, so only reading back can tell that
// the guard is missing.
type noop struct{ Runner }

func (noop) NewChain(string, string) error                  { return nil }
func (noop) ClearChain(string, string) error                { return nil }
func (noop) Append(string, string, ...string) error         { return nil }
func (noop) Insert(string, string, int, ...string) error    { return nil }
func (noop) DeleteIfExists(string, string, ...string) error { return nil }
func (noop) ChainExists(string, string) (bool, error)       { return true, nil }

// When the guard cannot be installed, or is not there after all, route_localnet stays 0 and the
// error says which.
func TestPrepareNodeRefusesLocalnetWithoutGuard(t *testing.T) {
	need(t)
	for name, wrap := range map[string]func(Runner) Runner{
		"insert-refused": func(r Runner) Runner { return failingInsert{r} },
		"not-applied":    func(r Runner) Runner { return noop{r} },
	} {
		t.Run(name, func(t *testing.T) {
			node := newNetns(t, "prep")
			s := nsSysctl{node}
			_, err := PrepareNode(wrap(nsIPTables(t, node)), s, rules())
			if err == nil || !strings.Contains(err.Error(), "route_localnet was not changed") {
				t.Errorf("PrepareNode without a guard: %v; want an error saying route_localnet was not changed", err)
			}
			if v, _ := s.Get(routeLocalnet); v != "0" {
				t.Errorf("route_localnet is %q although the guard could not be installed, want 0", v)
			}
		})
	}
}
