package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"

	"github.com/podidentity/podidentity/internal/iptables"
)

// readiness backs the probes: /healthz is liveness (always 200, body "Active" / "Not Active" as
// upstream's); /readyz is 200 only once the watches have synced and the redirect is installed,
// and 503 again from the moment NMI is asked to stop.
type readiness struct{ synced, redirected, stopping atomic.Bool }

func (r *readiness) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if r.synced.Load() && r.redirected.Load() {
			_, _ = w.Write([]byte("Active"))
			return
		}
		_, _ = w.Write([]byte("Not Active"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if r.stopping.Load() {
			http.Error(w, "not ready: shutting down", http.StatusServiceUnavailable)
			return
		}
		if !r.synced.Load() || !r.redirected.Load() {
			http.Error(w, "not ready: watches synced="+strconv.FormatBool(r.synced.Load())+", redirect installed="+strconv.FormatBool(r.redirected.Load()), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}

// newKeeper builds the iptables keeper of this node. Conntrack entries to the metadata address
// are deleted at every start (--enable-conntrack-deletion is implied). The rules are removed on
// stop only when the API shows an uninstall (iptables.RemoveOnShutdown); that needs NMI's pod
// from POD_NAMESPACE/POD_NAME. Without them NMI still runs, and its rules outlive it: the log
// says so and names the cleanup.
func newKeeper(ctx context.Context, o *options, kc kubernetes.Interface, getenv func(string) string, log logr.Logger) (*iptables.Keeper, error) {
	ipt, err := iptables.New("")
	if err != nil {
		return nil, err
	}
	k := &iptables.Keeper{IPT: ipt, Sysctl: iptables.ProcSysctl{}, Log: log,
		Interval: time.Duration(o.iptUpdateIntervalSec) * time.Second,
		Rules:    iptables.Rules{MetadataIP: o.metadataIP, MetadataPort: o.metadataPort, TargetIP: o.listenAddress, TargetPort: o.port}}
	k.Conntrack = func() (uint, error) { return iptables.DeleteConntrack(nil, k.Rules) }
	owner, err := iptables.ResolveOwner(ctx, kc, getenv("POD_NAMESPACE"), getenv("POD_NAME"))
	if err != nil {
		log.Error(err, "an uninstall will not be recognised: the iptables rules will stay when NMI stops; after uninstalling, run `nmi --cleanup-iptables` on each node")
		return k, nil
	}
	log.Info("rules will be removed on stop only when this DaemonSet or its namespace is being deleted", "daemonset", owner.Namespace+"/"+owner.Name)
	k.Uninstall = func(ctx context.Context) (bool, string) {
		return iptables.RemoveOnShutdown(iptables.ReadShutdownFacts(ctx, kc, owner))
	}
	return k, nil
}

// cleanupIPTables is --cleanup-iptables: remove NMI's chains and jumps from this node and exit,
// for nodes where NMI was not running when podidentity was uninstalled.
func cleanupIPTables(log logr.Logger) error {
	ipt, err := iptables.New("")
	if err != nil {
		return err
	}
	if err := iptables.Remove(ipt); err != nil {
		return fmt.Errorf("--cleanup-iptables: %w", err)
	}
	log.Info("--cleanup-iptables: NMI's iptables rules are removed from this node", "chains", []string{"nat/" + iptables.Chain, "filter/" + iptables.GuardChain})
	return nil
}
