// Package cloud is MIC's narrow view of Azure compute: read and change the user-assigned
// identities of one VM or VM scale set. It holds the types and errors shared by the ARM
// implementation (package armcloud) and the in-memory fake (package fakecloud); it imports no SDK.
package cloud

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Kind is the kind of compute resource identities are assigned to.
type Kind string

const (
	// KindVM is a standalone virtual machine (availability-set node).
	KindVM Kind = "virtualMachines"
	// KindVMSS is a VM scale set: identities are set on the whole scale set.
	KindVMSS Kind = "virtualMachineScaleSets"
)

// MaxIdentitiesPerRequest is ARM's limit of userAssignedIdentities entries in one request.
const MaxIdentitiesPerRequest = 150

// Resource names one VM or VM scale set.
type Resource struct {
	Kind           Kind
	SubscriptionID string
	ResourceGroup  string
	Name           string
}

// ID is the ARM resource ID.
func (r Resource) ID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/%s/%s",
		r.SubscriptionID, r.ResourceGroup, r.Kind, r.Name)
}

// ResourceKey is a comparable, case-insensitive key for maps: ARM names are case-insensitive and
// providerIDs come in either case. The zero key names no resource.
type ResourceKey struct {
	kind                      Kind
	subscription, group, name string
}

// Key returns r's map key.
func (r Resource) Key() ResourceKey {
	return ResourceKey{kind: Kind(strings.ToLower(string(r.Kind))), subscription: strings.ToLower(r.SubscriptionID),
		group: strings.ToLower(r.ResourceGroup), name: strings.ToLower(r.Name)}
}

// IsZero reports whether k names no resource.
func (k ResourceKey) IsZero() bool { return k == ResourceKey{} }

// String is the lower-cased ARM ID ("" for the zero key). It is stable: MIC derives the names
// of its ownership records from it.
func (k ResourceKey) String() string {
	if k.IsZero() {
		return ""
	}
	return fmt.Sprintf("/subscriptions/%s/resourcegroups/%s/providers/microsoft.compute/%s/%s", k.subscription, k.group, k.kind, k.name)
}

// String is the ARM ID.
func (r Resource) String() string { return r.ID() }

// IsZero reports whether r names nothing.
func (r Resource) IsZero() bool { return r.Name == "" }

var (
	vmssProviderID = regexp.MustCompile(`(?i)^azure:///subscriptions/([^/]+)/resourcegroups/([^/]+)/providers/microsoft\.compute/virtualmachinescalesets/([^/]+)/virtualmachines/[^/]+$`)
	vmProviderID   = regexp.MustCompile(`(?i)^azure:///subscriptions/([^/]+)/resourcegroups/([^/]+)/providers/microsoft\.compute/virtualmachines/([^/]+)$`)
)

// ErrBadProviderID means a node's spec.providerID is not an Azure VM or VMSS instance ID.
var ErrBadProviderID = errors.New("spec.providerID is not an Azure VM or VM scale set instance ID")

// Defaults fill in what a node without providerID cannot tell: it is taken to be a VM named after
// the node in the cloud config's subscription and resource group, as upstream did.
type Defaults struct {
	SubscriptionID string
	ResourceGroup  string
}

// ResourceForNode maps a node to the compute resource its identities live on. Subscription and
// resource group come from the providerID, so nodes in other resource groups work. An empty
// providerID falls back to a VM named nodeName in the defaults (fromProviderID=false tells the
// caller to warn).
func ResourceForNode(nodeName, providerID string, d Defaults) (r Resource, fromProviderID bool, err error) {
	if providerID == "" {
		if d.SubscriptionID == "" || d.ResourceGroup == "" {
			return Resource{}, false, fmt.Errorf("node %q has no spec.providerID and the cloud config names no subscriptionId/resourceGroup: %w", nodeName, ErrBadProviderID)
		}
		return Resource{Kind: KindVM, SubscriptionID: d.SubscriptionID, ResourceGroup: d.ResourceGroup, Name: nodeName}, false, nil
	}
	if m := vmssProviderID.FindStringSubmatch(providerID); m != nil {
		return Resource{Kind: KindVMSS, SubscriptionID: m[1], ResourceGroup: m[2], Name: m[3]}, true, nil
	}
	if m := vmProviderID.FindStringSubmatch(providerID); m != nil {
		return Resource{Kind: KindVM, SubscriptionID: m[1], ResourceGroup: m[2], Name: m[3]}, true, nil
	}
	return Resource{}, true, fmt.Errorf("node %q providerID %q: %w", nodeName, providerID, ErrBadProviderID)
}

// Identities is the identity block of a VM or VMSS.
type Identities struct {
	// UserAssigned maps the lower-cased identity ID to its client ID ("" when ARM did not say,
	// e.g. the identity was deleted and re-created).
	UserAssigned map[string]string
	// SystemAssigned is true when the resource has a system-assigned identity, which every
	// change must keep.
	SystemAssigned bool
	// ETag is the resource's ETag when it was read ("" if unknown). A PATCH that changes the
	// identity type to SystemAssigned or None drops every user-assigned identity, including ones
	// someone added since the read; such a PATCH is sent with If-Match: ETag, so ARM refuses it
	// (412) instead, and the caller re-reads (see ErrStale).
	ETag string
}

// ErrStale means ARM refused a conditional PATCH (412): the resource changed since it was read.
// Re-read it and plan again.
var ErrStale = errors.New("the VM/VMSS changed since it was read")

// Has reports whether the (case-insensitive) identity ID is assigned.
func (i Identities) Has(id string) bool {
	_, ok := i.UserAssigned[strings.ToLower(id)]
	return ok
}

// Update is one change of a resource's user-assigned identities (one PATCH).
type Update struct {
	// Add and Remove are identity IDs; together at most MaxIdentitiesPerRequest.
	Add, Remove []string
	// Current is what the caller believes is assigned now (a fresh read); it decides the
	// identity "type" so that a system-assigned identity is kept and "None" is set only when
	// no user-assigned identity remains.
	Current Identities
}

// ClientID is the client ID ARM reports for the (case-insensitive) identity ID: "" when the
// identity is not assigned or ARM reported none (ok tells the two apart).
func (i Identities) ClientID(id string) (clientID string, ok bool) {
	clientID, ok = i.UserAssigned[strings.ToLower(id)]
	return clientID, ok
}

// Compute reads and changes the identities of VMs and VM scale sets. Implementations wait for
// long-running operations to finish before returning.
type Compute interface {
	Get(ctx context.Context, r Resource) (Identities, error)
	// Update returns the identity block ARM reported when the change ended (the operation's
	// final response, not an extra call). An identity ARM reported no client ID for is missing
	// or "" in it.
	Update(ctx context.Context, r Resource, u Update) (Identities, error)
}

// Error is a failed ARM call.
type Error struct {
	// Operation is "vm_get", "vm_update", "vmss_get" or "vmss_update" (the upstream metric label).
	Operation  string
	Resource   Resource
	StatusCode int
	Code       string
	Message    string
	// RetryAfter is the server's Retry-After, when it sent one.
	RetryAfter time.Duration
	// Identities are the identity IDs the error names (LinkedAuthorizationFailed,
	// FailedIdentityOperation), lower-cased.
	Identities []string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s %s: HTTP %d %s: %s", e.Operation, e.Resource, e.StatusCode, e.Code, e.Message)
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

// Is lets errors.Is match the sentinel kinds below.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrThrottled:
		return e.StatusCode == 429
	case ErrNotFound:
		return e.StatusCode == 404
	case ErrConflict:
		return e.StatusCode == 409
	case ErrStale:
		return e.StatusCode == 412
	case ErrIdentity:
		return len(e.Identities) > 0 && (e.Code == "LinkedAuthorizationFailed" || e.Code == "FailedIdentityOperation" ||
			strings.Contains(e.Message, "LinkedAuthorizationFailed") || strings.Contains(e.Message, "FailedIdentityOperation"))
	}
	return false
}

var (
	// ErrThrottled is ARM's 429: wait for RetryAfter.
	ErrThrottled = errors.New("ARM throttled the request")
	// ErrNotFound means the VM or VMSS does not exist (any more).
	ErrNotFound = errors.New("VM or VM scale set not found")
	// ErrConflict means another operation on the resource is running, or it is being deleted.
	ErrConflict = errors.New("conflicting operation on the VM or VM scale set")
	// ErrIdentity means ARM refused specific identities (see Error.Identities); the others can be
	// retried at once without them.
	ErrIdentity = errors.New("ARM refused some identities")
)

var identityInMessage = regexp.MustCompile(`(?i)/subscriptions/[^/\s'",]+/resourcegroups/[^/\s'",]+/providers/microsoft\.managedidentity/userassignedidentities/[^/\s'",\]\)]+`)

// IdentitiesInMessage extracts the user-assigned identity IDs an ARM error message names,
// lower-cased and de-duplicated.
func IdentitiesInMessage(msg string) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range identityInMessage.FindAllString(msg, -1) {
		m = strings.TrimRight(strings.ToLower(m), ".")
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}

// OperationName is the upstream metric label of a call on r.
func OperationName(r Resource, write bool) string {
	p := "vm"
	if r.Kind == KindVMSS {
		p = "vmss"
	}
	if write {
		return p + "_update"
	}
	return p + "_get"
}
