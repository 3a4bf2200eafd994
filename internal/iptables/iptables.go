// Package iptables installs and maintains NMI's redirect of pod traffic for the Instance Metadata
// Service: nat chain aad-metadata, jumped to first from PREROUTING, DNAT'ing TCP to the metadata
// address to NMI's listener. Those rules are exactly upstream's, so an upgrade in place or a
// rollback finds what it expects. A filter chain of NMI's own (aad-metadata-localnet, first in
// INPUT) guards the route_localnet the redirect needs. The rules outlive NMI's restarts and are
// removed only on uninstall (uninstall.go) or by `nmi --cleanup-iptables`.
package iptables

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// Chain is the nat chain NMI owns.
	Chain = "aad-metadata"
	table = "nat"
	// PreRouting is where the jump goes: only traffic arriving from pod interfaces is redirected.
	PreRouting = "PREROUTING"
)

// Runner is the part of go-iptables used here (an interface so tests can count calls).
type Runner interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	List(table, chain string) ([]string, error)
	ClearChain(table, chain string) error
	Append(table, chain string, rulespec ...string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
	ClearAndDeleteChain(table, chain string) error
}

// New returns go-iptables for IPv4 using the iptables binary at path ("" = from $PATH).
func New(path string) (Runner, error) {
	var ipt *goipt.IPTables
	var err error
	if path != "" {
		ipt, err = goipt.New(goipt.Timeout(5), goipt.Path(path))
	} else {
		ipt, err = goipt.New(goipt.Timeout(5))
	}
	if err != nil {
		return nil, fmt.Errorf("iptables not usable (%w): install the iptables package (Debian: apt-get install iptables; CI: .ci/run does it)", err)
	}
	return ipt, nil
}

// Rules describes the redirect.
type Rules struct {
	// MetadataIP:MetadataPort is the address pods call (169.254.169.254:80).
	MetadataIP   string
	MetadataPort int
	// TargetIP:TargetPort is NMI's listener. A listener on 0.0.0.0 is reached through 127.0.0.1.
	TargetIP   string
	TargetPort int
}

func (r Rules) target() string {
	ip := r.TargetIP
	if ip == "" || ip == "0.0.0.0" || ip == "::" {
		ip = "127.0.0.1"
	}
	return net.JoinHostPort(ip, strconv.Itoa(r.TargetPort))
}

// dnatSpec is the DNAT rule as go-iptables takes it; Expected is what `iptables -S` prints.
func (r Rules) dnatSpec() []string {
	return []string{"!", "-s", "127.0.0.1/32", "-d", r.MetadataIP + "/32", "-p", "tcp", "-m", "tcp",
		"--dport", strconv.Itoa(r.MetadataPort), "-j", "DNAT", "--to-destination", r.target()}
}

// Expected is the chain as `iptables -t nat -S aad-metadata` prints it when correct.
func (r Rules) Expected() []string {
	return []string{
		"-N " + Chain,
		"-A " + Chain + " " + strings.Join(r.dnatSpec(), " "),
		"-A " + Chain + " -j RETURN",
	}
}

// Validate checks the addresses.
func (r Rules) Validate() error {
	if ip := net.ParseIP(r.MetadataIP); ip == nil || ip.To4() == nil {
		return fmt.Errorf("metadata IP %q is not an IPv4 address: set --metadata-ip", r.MetadataIP)
	}
	if r.MetadataPort <= 0 || r.MetadataPort > 65535 || r.TargetPort <= 0 || r.TargetPort > 65535 {
		return fmt.Errorf("ports %d (metadata) and %d (NMI) must be 1-65535", r.MetadataPort, r.TargetPort)
	}
	return nil
}

// Ensure makes the chain and the jump exactly as expected. It reports whether it changed
// anything. The chain is flushed and rewritten when its rules differ in any way; the jump is kept
// the first rule of PREROUTING (a rule inserted before it, say an ACCEPT, would let pod traffic
// reach IMDS).
func Ensure(ipt Runner, r Rules) (changed bool, err error) {
	changed, err = ensureChain(ipt, table, Chain, r.Expected(), [][]string{r.dnatSpec(), {"-j", "RETURN"}})
	if err != nil {
		return changed, err
	}
	moved, err := ensureJumpFirst(ipt, table, PreRouting, Chain)
	return changed || moved, err
}

// ensureChain creates chain when missing and rewrites it when its rules differ from expected
// (as `iptables -S chain` prints them).
func ensureChain(ipt Runner, table, chain string, expected []string, specs [][]string) (changed bool, err error) {
	ok, err := ipt.ChainExists(table, chain)
	if err != nil {
		return false, fmt.Errorf("checking chain %s/%s: %w", table, chain, err)
	}
	if !ok {
		if err := ipt.NewChain(table, chain); err != nil {
			return false, fmt.Errorf("creating chain %s/%s: %w", table, chain, err)
		}
		changed = true
	}
	got, err := ipt.List(table, chain)
	if err != nil {
		return changed, fmt.Errorf("listing chain %s/%s: %w", table, chain, err)
	}
	if slices.Equal(got, expected) {
		return changed, nil
	}
	if err := ipt.ClearChain(table, chain); err != nil {
		return changed, fmt.Errorf("flushing chain %s/%s: %w", table, chain, err)
	}
	for _, spec := range specs {
		if err := ipt.Append(table, chain, spec...); err != nil {
			return true, fmt.Errorf("adding %q to %s/%s: %w", strings.Join(spec, " "), table, chain, err)
		}
	}
	return true, nil
}

// movingComment marks the stand-in jump used while the real one is moved to the top.
const movingComment = "podidentity: moving the jump to the top"

// ensureJumpFirst makes `-j chain` the first rule of from. A jump found further down is moved
// without a moment in which no jump exists: a stand-in jump (same target, with a comment, so it
// is a different rule spec) goes in first, then the old jump is deleted by spec, the real one
// inserted at 1 and the stand-in deleted. Only rules of NMI's own are ever deleted, by spec,
// so rules other agents add meanwhile are never touched.
func ensureJumpFirst(ipt Runner, table, from, chain string) (changed bool, err error) {
	jump := []string{"-j", chain}
	rules, err := ipt.List(table, from)
	if err != nil {
		return false, fmt.Errorf("listing %s/%s: %w", table, from, err)
	}
	// rules[0] is the policy line (-P) of a built-in chain.
	first := len(rules) > 1 && rules[1] == "-A "+from+" -j "+chain
	if first {
		return false, nil
	}
	present := slices.Contains(rules, "-A "+from+" -j "+chain)
	if !present {
		if err := ipt.Insert(table, from, 1, jump...); err != nil {
			return false, fmt.Errorf("inserting the %s jump to %s: %w", from, chain, err)
		}
		return true, nil
	}
	standIn := []string{"-m", "comment", "--comment", movingComment, "-j", chain}
	if err := ipt.Insert(table, from, 1, standIn...); err != nil {
		return false, fmt.Errorf("inserting a stand-in %s jump to %s: %w", from, chain, err)
	}
	for {
		ok, err := ipt.Exists(table, from, jump...)
		if err != nil {
			return true, fmt.Errorf("checking the %s jump to %s: %w", from, chain, err)
		}
		if !ok {
			break
		}
		if err := ipt.DeleteIfExists(table, from, jump...); err != nil {
			return true, fmt.Errorf("deleting the misplaced %s jump to %s: %w", from, chain, err)
		}
	}
	if err := ipt.Insert(table, from, 1, jump...); err != nil {
		return true, fmt.Errorf("inserting the %s jump to %s: %w", from, chain, err)
	}
	if err := ipt.DeleteIfExists(table, from, standIn...); err != nil {
		return true, fmt.Errorf("deleting the stand-in %s jump to %s: %w", from, chain, err)
	}
	return true, nil
}

// Remove deletes NMI's rules: the nat chain and its jump, and the localnet guard (filter chain
// and its jump). Used on uninstall and by --cleanup-iptables, never on a plain restart.
func Remove(ipt Runner) error {
	return errors.Join(removeChain(ipt, table, PreRouting, Chain), removeChain(ipt, filterTable, Input, GuardChain))
}

// removeChain deletes every jump from `from` to chain (duplicates and a stand-in left by an
// interrupted move included), then the chain.
func removeChain(ipt Runner, table, from, chain string) error {
	ok, err := ipt.ChainExists(table, chain)
	if err != nil || !ok {
		// No chain means no jump either: iptables refuses jumps to missing chains.
		return err
	}
	for _, jump := range [][]string{{"-j", chain}, {"-m", "comment", "--comment", movingComment, "-j", chain}} {
		for {
			ok, err := ipt.Exists(table, from, jump...)
			if err != nil {
				return fmt.Errorf("checking the %s jump to %s: %w", from, chain, err)
			}
			if !ok {
				break
			}
			if err := ipt.DeleteIfExists(table, from, jump...); err != nil {
				return fmt.Errorf("deleting the %s jump to %s: %w", from, chain, err)
			}
		}
	}
	if err := ipt.ClearAndDeleteChain(table, chain); err != nil {
		return fmt.Errorf("deleting chain %s/%s: %w", table, chain, err)
	}
	return nil
}

// Sysctl reads and writes kernel parameters by name (e.g. net/ipv4/conf/all/route_localnet).
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// ProcSysctl uses /proc/sys of the current network namespace.
type ProcSysctl struct{}

func (ProcSysctl) Get(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	return strings.TrimSpace(string(b)), err
}

func (ProcSysctl) Set(name, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
}

// routeLocalnet is needed when the DNAT target is a loopback address: without it the kernel
// drops packets from pod interfaces to 127.0.0.0/8 as martians.
const routeLocalnet = "net/ipv4/conf/all/route_localnet"

// RouteLocalnetFix is what to do when NMI cannot turn on route_localnet itself (the container
// runtime mounts /proc/sys read-only unless the container is privileged).
const RouteLocalnetFix = "set the chart value nmi.prepareNode=true (a privileged init container that installs the guard and sets the sysctl), or set net.ipv4.conf.all.route_localnet=1 on the node"

// EnsureRouteLocalnet turns on route_localnet when the target is loopback; it reports whether it
// had to change it. The caller installs the localnet guard first.
func EnsureRouteLocalnet(s Sysctl, r Rules) (bool, error) {
	if !r.needsLocalnet() {
		return false, nil
	}
	changed, err := setRouteLocalnet(s)
	if err != nil {
		return false, fmt.Errorf("%w, needed to DNAT pod traffic to %s: %s", err, r.target(), RouteLocalnetFix)
	}
	return changed, nil
}

// needsLocalnet: only a loopback DNAT target needs route_localnet.
func (r Rules) needsLocalnet() bool {
	ip, _, _ := net.SplitHostPort(r.target())
	return net.ParseIP(ip).IsLoopback()
}

// setRouteLocalnet sets route_localnet to 1 unless it is already; it reports whether it changed it.
func setRouteLocalnet(s Sysctl) (bool, error) {
	v, err := s.Get(routeLocalnet)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", routeLocalnet, err)
	}
	if v == "1" {
		return false, nil
	}
	if err := s.Set(routeLocalnet, "1"); err != nil {
		return false, fmt.Errorf("setting %s=1: %w", routeLocalnet, err)
	}
	return true, nil
}

// DeleteConntrack removes tracked TCP connections to the metadata address, so connections
// opened before the redirect existed cannot keep reaching IMDS directly. h nil means the
// current network namespace.
func DeleteConntrack(h *netlink.Handle, r Rules) (uint, error) {
	ip := net.ParseIP(r.MetadataIP)
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigDstIP, ip); err != nil {
		return 0, err
	}
	if err := f.AddProtocol(unix.IPPROTO_TCP); err != nil {
		return 0, err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, uint16(r.MetadataPort)); err != nil {
		return 0, err
	}
	family := netlink.InetFamily(unix.AF_INET)
	if ip.To4() == nil {
		family = netlink.InetFamily(unix.AF_INET6)
	}
	var n uint
	var err error
	if h == nil {
		n, err = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
	} else {
		n, err = h.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
	}
	if err != nil {
		return n, fmt.Errorf("deleting conntrack entries for tcp %s:%d: %w", r.MetadataIP, r.MetadataPort, err)
	}
	return n, nil
}
