// Package mic is the Managed Identity Controller: it keeps AzureAssignedIdentities and the
// user-assigned identities of VMs / VM scale sets in line with pods, bindings and identities.
//
// Structure: informer events mark the world dirty; a batcher coalesces bursts (idle window, max
// wait); each pass recomputes the desired state with the pure package desired and queues the
// VMs/VMSS whose state differs; workers reconcile one VM/VMSS at a time each (never two workers
// on one resource), sending all of its identity changes in one PATCH. Nothing is queued and
// dropped: a failed resource is simply reconciled again from a fresh desired state.
package mic

import (
	"fmt"
	"strings"
	"time"

	"github.com/podidentity/podidentity/internal/cloud"
)

// Options is everything that changes MIC's behaviour. Zero values get defaults in Defaulted.
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

// Defaulted returns o with defaults filled in.
func (o Options) Defaulted() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.BatchIdle, time.Second)
	def(&o.BatchMax, 5*time.Second)
	def(&o.ResyncInterval, time.Hour)
	def(&o.ReconcileInterval, 3*time.Minute)
	def(&o.QuarantineBase, 10*time.Second)
	def(&o.QuarantineMax, 10*time.Minute)
	def(&o.RetryBase, time.Second)
	def(&o.RetryMax, 5*time.Minute)
	if o.Workers <= 0 {
		o.Workers = 16
	}
	if o.KubeWrites <= 0 {
		o.KubeWrites = 50
	}
	if o.ChunkSize <= 0 || o.ChunkSize > cloud.MaxIdentitiesPerRequest {
		o.ChunkSize = cloud.MaxIdentitiesPerRequest
	}
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	return o
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

// Validate reports options that cannot work.
func (o Options) Validate() error {
	if o.BatchMax < o.BatchIdle {
		return fmt.Errorf("batch max wait %s is shorter than the idle window %s: make it at least as long", o.BatchMax, o.BatchIdle)
	}
	if o.QuarantineMax < o.QuarantineBase {
		return fmt.Errorf("quarantine max %s is shorter than its base %s", o.QuarantineMax, o.QuarantineBase)
	}
	return nil
}
