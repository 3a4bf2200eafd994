package mic

import (
	"fmt"
	"strings"

	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// ClientIDError says why MIC does not mark an AzureAssignedIdentity Assigned although its
// identity is on the VM/VMSS: the AzureIdentity's spec.clientID is not the client ID ARM
// reports for its spec.resourceID. NMI asks IMDS for tokens by these IDs, so an AzureIdentity
// pairing one identity's resourceID with another's clientID would otherwise hand a pod a token
// for an identity it is not bound to (issue #11).
type ClientIDError struct {
	// Identity is the AzureIdentity as namespace/name.
	Identity   string
	ResourceID string
	Resource   cloud.Resource
	// Spec is spec.clientID; Reported is what ARM reports ("" when it reported none).
	Spec, Reported string
}

func (e *ClientIDError) Error() string {
	if e.Mismatch() {
		return fmt.Sprintf("AzureIdentity %s has clientID %s but ARM reports client ID %s for resourceID %s on %s: set spec.clientID to %s",
			e.Identity, e.Spec, e.Reported, e.ResourceID, e.Resource, e.Reported)
	}
	return fmt.Sprintf("ARM reports no client ID for resourceID %s (AzureIdentity %s, clientID %s) on %s, so MIC cannot confirm the two belong together; "+
		"it marks the identity Assigned once a read of the VM/VMSS reports a matching client ID (at the latest at the next reconcile). "+
		"If the identity was deleted or re-created, remove it from the VM/VMSS so that MIC assigns it again",
		e.ResourceID, e.Identity, e.Spec, e.Resource)
}

// Mismatch reports whether ARM named a client ID and it differs from spec.clientID (as opposed
// to ARM naming none).
func (e *ClientIDError) Mismatch() bool { return e.Reported != "" }

// checkClientID compares a's spec.clientID with the client ID known reports for its resourceID
// on res. It returns nil when they are equal (case-insensitively), for service principals (they
// are not assigned to VMs), and when the identity is not on the VM/VMSS (nothing to compare yet).
func checkClientID(a *desired.AAI, res cloud.Resource, known cloud.Identities) *ClientIDError {
	if !a.NeedsAzure() {
		return nil
	}
	reported, ok := known.ClientID(a.IdentityID())
	if !ok {
		return nil
	}
	spec := strings.TrimSpace(a.Identity.Spec.ClientID)
	reported = strings.TrimSpace(reported)
	if reported != "" && strings.EqualFold(spec, reported) {
		return nil
	}
	// An empty report is refused too: without it nothing ties clientID to resourceID. It occurs
	// only for an identity deleted or re-created after it was assigned (which IMDS cannot serve
	// either) or an ARM answer without the identity block; MIC reads again at the next reconcile
	// or, after its own PATCH, at once.
	return &ClientIDError{Identity: a.Identity.Namespace + "/" + a.Identity.Name, ResourceID: a.Identity.Spec.ResourceID,
		Resource: res, Spec: a.Identity.Spec.ClientID, Reported: reported}
}

// takeReported copies into next the client IDs a PATCH response reported for the identities in
// next (the response is the fresher answer) and tells whether it left any identity in added
// without one, in which case the caller reads the resource once more instead of waiting for the
// next reconcile.
func takeReported(next, reported cloud.Identities, added []string) (missing bool) {
	for id := range next.UserAssigned {
		if v, ok := reported.UserAssigned[id]; ok {
			next.UserAssigned[id] = v
		}
	}
	for _, id := range added {
		if next.UserAssigned[id] == "" {
			missing = true
		}
	}
	return missing
}

// demotes reports whether an Assigned AAI for a must go back to Created because ARM names
// another client ID for its identity on res. When ARM names none the AAI is left as it is: it is
// not promoted either, and a transient answer without the identity block must not take tokens
// away.
func demotes(a *desired.AAI, res cloud.Resource, known cloud.Identities) bool {
	ce := checkClientID(a, res, known)
	return ce != nil && ce.Mismatch()
}
