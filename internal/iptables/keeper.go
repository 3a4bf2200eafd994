package iptables

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-logr/logr"
)

// Keeper installs the rules, re-asserts them periodically, and on shutdown leaves them in place
// unless Uninstall says NMI is being uninstalled.
type Keeper struct {
	IPT      Runner
	Rules    Rules
	Sysctl   Sysctl
	Interval time.Duration
	// Conntrack deletes conntrack entries to the metadata address. It runs after every install
	// and after every repair of the redirect: a connection opened while the redirect was missing
	// would otherwise keep reaching IMDS directly.
	Conntrack func() (uint, error)
	// Uninstall is asked once ctx ends whether to remove the rules (see RemoveOnShutdown); nil
	// keeps them.
	Uninstall func(context.Context) (remove bool, why string)
	Log       logr.Logger
}

// ErrConntrackRequired is returned by Run when Keeper.Conntrack is not set.
var ErrConntrackRequired = errors.New("the keeper needs Conntrack: stale IMDS connections must be cut at every start")

// Run installs the rules, calls ready once they are in place (and conntrack is cleaned), then
// repairs them every Interval until ctx ends. An error is returned when the rules cannot be
// installed: NMI must not serve without them (pods would reach IMDS).
//
// The rules stay when ctx ends, unless Uninstall answers remove: while NMI is away (rolling
// update, crash, restart) pod connections to IMDS are DNAT'ed to a port nobody listens on and
// fail, and the SDKs retry until the next NMI answers. Removing them would hand every pod the
// node's IMDS, with every identity on the VM, for as long as NMI is away.
func (k *Keeper) Run(ctx context.Context, ready func()) error {
	if err := k.Rules.Validate(); err != nil {
		return err
	}
	if k.Conntrack == nil {
		return ErrConntrackRequired
	}
	// The guard goes in before route_localnet is turned on, so that pods never see one without
	// the other.
	if _, err := EnsureGuard(k.IPT); err != nil {
		return err
	}
	if _, err := Ensure(k.IPT, k.Rules); err != nil {
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
	k.Log.Info("iptables redirect installed", "chain", Chain, "guard", GuardChain, "metadata", net.JoinHostPort(k.Rules.MetadataIP, strconv.Itoa(k.Rules.MetadataPort)), "target", k.Rules.target())
	if err := k.flushConntrack("start"); err != nil {
		return err
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
			return k.shutdown()
		case <-t.C:
			if err := k.repair(); err != nil {
				return err
			}
		}
	}
}

func (k *Keeper) repair() error {
	guard, err := EnsureGuard(k.IPT)
	if err != nil {
		return err
	}
	if guard {
		k.Log.Info("localnet guard was changed by someone else and has been repaired", "chain", GuardChain)
	}
	nat, err := Ensure(k.IPT, k.Rules)
	if err != nil {
		return err
	}
	if nat {
		k.Log.Info("iptables redirect was changed by someone else and has been repaired", "chain", Chain)
		return k.flushConntrack("repair")
	}
	return nil
}

func (k *Keeper) flushConntrack(when string) error {
	n, err := k.Conntrack()
	if err != nil {
		return err
	}
	k.Log.Info("deleted conntrack entries to the metadata address", "count", n, "when", when)
	return nil
}

func (k *Keeper) shutdown() error {
	if k.Uninstall == nil {
		k.Log.Info("stopping: iptables rules kept; pod connections to IMDS fail until NMI is back", "chain", Chain)
		return nil
	}
	// The decision reads the API; a fresh context bounds it well inside the pod's grace period.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	remove, why := k.Uninstall(ctx)
	if !remove {
		k.Log.Info("stopping: iptables rules kept; pod connections to IMDS fail until NMI is back", "chain", Chain, "reason", why)
		return nil
	}
	if err := Remove(k.IPT); err != nil {
		return fmt.Errorf("removing the iptables rules on uninstall (%s): %w; remove them with `nmi --cleanup-iptables` on the node", why, err)
	}
	k.Log.Info("uninstall: iptables rules removed", "chain", Chain, "guard", GuardChain, "reason", why)
	return nil
}
