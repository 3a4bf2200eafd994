// Package mic is the Managed Identity Controller: it keeps AzureAssignedIdentities and the
// user-assigned identities of VMs / VM scale sets in line with pods, bindings and identities.
//
// Structure: informer events (watch.go) mark the world dirty; a batcher coalesces bursts (idle
// window, max wait; controller.go); each pass (pass.go) recomputes the desired state with the pure
// package desired, stores it as a snapshot and queues every VM/VMSS. Workers reconcile one
// VM/VMSS at a time each (never two workers on one resource; reconcile.go): read ARM when needed,
// plan, apply in one PATCH per chunk (arm.go), and write the AzureAssignedIdentities
// (aaiwrite.go). Nothing is queued and dropped: a failed resource is simply reconciled again from
// a fresh desired state.
package mic

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/podidentity/podidentity/internal/cloud"
)

// Options is everything that changes MIC's behaviour. Start from DefaultOptions: a zero field is
// invalid, not defaulted.
type Options struct {
	// Namespace is MIC's own namespace (MIC_POD_NAMESPACE): ownership records live there.
	Namespace string
	// ForceNamespaced is --forceNamespaced / FORCENAMESPACED=true.
	ForceNamespaced bool
	// KeepFinishedPods keeps identities of Succeeded/Failed pods (upstream behaviour).
	KeepFinishedPods bool
	// RequireServiceAccountBindings ignores bindings without spec.serviceAccountName, with a
	// Warning event on each (--require-service-account-bindings).
	RequireServiceAccountBindings bool
	// SkipFederatedAssignments writes no AzureAssignedIdentities for federated identities
	// (--skip-federated-assignments); NMI does not need them.
	SkipFederatedAssignments bool
	// ImmutableClientIDs are never removed from a VM/VMSS (--immutable-user-msis plus the
	// cluster identity from the cloud config).
	ImmutableClientIDs []string
	// Defaults place nodes without providerID (VM named after the node).
	Defaults cloud.Defaults

	// BatchIdle and BatchMax bound how events are coalesced: a pass starts once no event arrived
	// for BatchIdle, or BatchMax after the first event of a burst.
	BatchIdle, BatchMax time.Duration
	// Workers is how many VMs/VMSS are reconciled in parallel.
	Workers int
	// KubeWrites bounds concurrent AzureAssignedIdentity writes per VM/VMSS (--createDeleteBatch).
	KubeWrites int
	// ResyncInterval forces a pass without events (--syncRetryDuration).
	ResyncInterval time.Duration
	// ReconcileInterval re-reads every VM/VMSS from ARM and re-adds identities removed out of
	// band (--identity-assignment-reconcile-interval).
	ReconcileInterval time.Duration
	// QuarantineBase and QuarantineMax bound the exponential backoff of identities ARM refused.
	QuarantineBase, QuarantineMax time.Duration
	// RetryBase and RetryMax bound the backoff of a VM/VMSS whose ARM call failed otherwise.
	RetryBase, RetryMax time.Duration
	// ChunkSize is the most identities per PATCH (ARM's limit is 150).
	ChunkSize int
}

// DefaultOptions are MIC's defaults. Each is written once: those of options with a flag in
// AddFlags (which sets every field it registers to the flag's default, as pflag does), the
// others here.
func DefaultOptions() Options {
	o := Options{
		QuarantineBase: 10 * time.Second, QuarantineMax: 10 * time.Minute,
		RetryBase: time.Second, RetryMax: 5 * time.Minute, ChunkSize: cloud.MaxIdentitiesPerRequest,
	}
	o.AddFlags(pflag.NewFlagSet("defaults", pflag.ContinueOnError))
	return o
}

// AddFlags registers the flags that set o and sets those fields to the flags' defaults (docs
// are generated from these literals: `make docs-flags`). Namespace, ImmutableClientIDs and
// Defaults come from the environment and the cloud config, so the command sets them.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&o.ForceNamespaced, "forceNamespaced", false, "Require identity, binding and pod in one namespace (also env FORCENAMESPACED=true).")
	fs.DurationVar(&o.ResyncInterval, "syncRetryDuration", time.Hour, "Period of a full pass even without events.")
	fs.IntVar(&o.KubeWrites, "createDeleteBatch", 50, "Most concurrent AzureAssignedIdentity writes per VM/VMSS.")
	fs.DurationVar(&o.ReconcileInterval, "identity-assignment-reconcile-interval", 3*time.Minute, "Period of re-reading every VM/VMSS and re-adding identities removed out of band.")
	fs.BoolVar(&o.KeepFinishedPods, "keep-finished-pods", false, "Keep identities of Succeeded/Failed pods assigned (upstream behaviour).")
	fs.BoolVar(&o.RequireServiceAccountBindings, "require-service-account-bindings", false, "Ignore AzureIdentityBindings without spec.serviceAccountName (a Warning event on each says to set it); set the same on NMI.")
	fs.BoolVar(&o.SkipFederatedAssignments, "skip-federated-assignments", false, "Write no AzureAssignedIdentities for federated identities (NMI resolves them from the bindings; kubectl get azureassignedidentities then omits them).")
	fs.DurationVar(&o.BatchIdle, "batch-idle", time.Second, "Start a pass once no event arrived for this long.")
	fs.DurationVar(&o.BatchMax, "batch-max", 5*time.Second, "Start a pass at the latest this long after the first event of a burst (a VM/VMSS whose PATCH is running collects later changes into its next PATCH anyway).")
	fs.IntVar(&o.Workers, "workers", 16, "VMs/VMSS reconciled in parallel.")
}

// ErrInvalidOptions is wrapped by every error of Validate.
var ErrInvalidOptions = errors.New("invalid MIC options")

// Validate reports the first option that cannot work, naming its flag and what to set.
func (o Options) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidOptions, fmt.Sprintf(format, a...))
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"--batch-idle", o.BatchIdle}, {"--batch-max", o.BatchMax}, {"--syncRetryDuration", o.ResyncInterval},
		{"--identity-assignment-reconcile-interval", o.ReconcileInterval},
		{"Options.QuarantineBase", o.QuarantineBase}, {"Options.QuarantineMax", o.QuarantineMax},
		{"Options.RetryBase", o.RetryBase}, {"Options.RetryMax", o.RetryMax},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return bad("%s is %s: set a positive duration", p.name, p.d)
		}
	}
	switch {
	case o.Namespace == "":
		return bad("no namespace: set MIC_POD_NAMESPACE to MIC's namespace (the downward API field metadata.namespace)")
	case o.BatchMax < o.BatchIdle:
		return bad("--batch-max %s is shorter than --batch-idle %s: make it at least as long", o.BatchMax, o.BatchIdle)
	case o.QuarantineMax < o.QuarantineBase:
		return bad("Options.QuarantineMax %s is shorter than Options.QuarantineBase %s: make it at least as long", o.QuarantineMax, o.QuarantineBase)
	case o.RetryMax < o.RetryBase:
		return bad("Options.RetryMax %s is shorter than Options.RetryBase %s: make it at least as long", o.RetryMax, o.RetryBase)
	case o.Workers < 1:
		return bad("--workers is %d: set at least 1", o.Workers)
	case o.KubeWrites < 1:
		return bad("--createDeleteBatch is %d: set at least 1", o.KubeWrites)
	case o.ChunkSize < 1 || o.ChunkSize > cloud.MaxIdentitiesPerRequest:
		return bad("Options.ChunkSize is %d: set 1 to %d (ARM's limit per request)", o.ChunkSize, cloud.MaxIdentitiesPerRequest)
	}
	return nil
}

func (o Options) immutableSet() map[string]bool {
	m := map[string]bool{}
	for _, id := range o.ImmutableClientIDs {
		if id = strings.TrimSpace(strings.ToLower(id)); id != "" {
			m[id] = true
		}
	}
	return m
}
