// Package iptables installs and maintains NMI's redirect of pod traffic for the Instance Metadata
// Service: nat chain aad-metadata, jumped to from PREROUTING, DNAT'ing TCP to the metadata
// address to NMI's listener. The rules are exactly upstream's, so an upgrade in place or a
// rollback finds what it expects.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/go-logr/logr"
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
// anything. The chain is flushed and rewritten when its rules differ in any way; the jump is
// inserted at position 1 when missing (an existing jump is left where it is).
func Ensure(ipt Runner, r Rules) (changed bool, err error) {
	ok, err := ipt.ChainExists(table, Chain)
	if err != nil {
		return false, fmt.Errorf("checking chain %s: %w", Chain, err)
	}
	if !ok {
		if err := ipt.NewChain(table, Chain); err != nil {
			return false, fmt.Errorf("creating chain %s: %w", Chain, err)
		}
		changed = true
	}
	got, err := ipt.List(table, Chain)
	if err != nil {
		return changed, fmt.Errorf("listing chain %s: %w", Chain, err)
	}
	if !slices.Equal(got, r.Expected()) {
		if err := ipt.ClearChain(table, Chain); err != nil {
			return changed, fmt.Errorf("flushing chain %s: %w", Chain, err)
		}
		if err := ipt.Append(table, Chain, r.dnatSpec()...); err != nil {
			return true, fmt.Errorf("adding the DNAT rule to %s: %w", Chain, err)
		}
		if err := ipt.Append(table, Chain, "-j", "RETURN"); err != nil {
			return true, fmt.Errorf("adding the RETURN rule to %s: %w", Chain, err)
		}
		changed = true
	}
	ok, err = ipt.Exists(table, PreRouting, "-j", Chain)
	if err != nil {
		return changed, fmt.Errorf("checking the %s jump to %s: %w", PreRouting, Chain, err)
	}
	if !ok {
		if err := ipt.Insert(table, PreRouting, 1, "-j", Chain); err != nil {
			return changed, fmt.Errorf("inserting the %s jump to %s: %w", PreRouting, Chain, err)
		}
		changed = true
	}
	return changed, nil
}

// Remove deletes the jump and the chain (on shutdown).
func Remove(ipt Runner) error {
	ok, err := ipt.ChainExists(table, Chain)
	if err != nil || !ok {
		// No chain means no jump either: iptables refuses jumps to missing chains.
		return err
	}
	var errs []error
	if err := ipt.DeleteIfExists(table, PreRouting, "-j", Chain); err != nil {
		errs = append(errs, fmt.Errorf("deleting the %s jump: %w", PreRouting, err))
	}
	if err := ipt.ClearAndDeleteChain(table, Chain); err != nil {
		errs = append(errs, fmt.Errorf("deleting chain %s: %w", Chain, err))
	}
	return errors.Join(errs...)
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

// EnsureRouteLocalnet turns on route_localnet when the target is loopback; it reports whether it
// had to change it.
func EnsureRouteLocalnet(s Sysctl, r Rules) (bool, error) {
	ip, _, _ := net.SplitHostPort(r.target())
	if !net.ParseIP(ip).IsLoopback() {
		return false, nil
	}
	v, err := s.Get(routeLocalnet)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", routeLocalnet, err)
	}
	if v == "1" {
		return false, nil
	}
	if err := s.Set(routeLocalnet, "1"); err != nil {
		return false, fmt.Errorf("setting %s=1, needed to DNAT pod traffic to %s: %w (grant NET_ADMIN and mount /proc/sys writable, or set it on the node)", routeLocalnet, r.target(), err)
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

// Keeper re-asserts the rules periodically and removes them on shutdown.
type Keeper struct {
	IPT      Runner
	Rules    Rules
	Sysctl   Sysctl
	Interval time.Duration
	// Conntrack, when set, deletes conntrack entries after the first install.
	Conntrack func() (uint, error)
	Log       logr.Logger
}

// Run installs the rules, calls ready once they are in place (and conntrack is cleaned), then
// repairs them every Interval until ctx ends; then it removes them. An error is returned when
// the rules cannot be installed: NMI must not serve without them (pods would reach IMDS).
func (k *Keeper) Run(ctx context.Context, ready func()) error {
	if err := k.Rules.Validate(); err != nil {
		return err
	}
	if k.Sysctl != nil {
		changed, err := EnsureRouteLocalnet(k.Sysctl, k.Rules)
		if err != nil {
			return err
		}
		if changed {
			k.Log.Info("turned on route_localnet so that pod traffic can be DNAT'ed to NMI on loopback", "sysctl", routeLocalnet, "target", k.Rules.target())
		}
	}
	if _, err := Ensure(k.IPT, k.Rules); err != nil {
		return err
	}
	k.Log.Info("iptables redirect installed", "chain", Chain, "metadata", net.JoinHostPort(k.Rules.MetadataIP, strconv.Itoa(k.Rules.MetadataPort)), "target", k.Rules.target())
	if k.Conntrack != nil {
		n, err := k.Conntrack()
		if err != nil {
			return err
		}
		k.Log.Info("deleted conntrack entries to the metadata address", "count", n)
	}
	ready()
	interval := k.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := Remove(k.IPT); err != nil {
				return fmt.Errorf("removing the redirect on shutdown: %w", err)
			}
			k.Log.Info("iptables redirect removed")
			return nil
		case <-t.C:
			changed, err := Ensure(k.IPT, k.Rules)
			if err != nil {
				return err
			}
			if changed {
				k.Log.Info("iptables redirect was changed by someone else and has been repaired", "chain", Chain)
			}
		}
	}
}
