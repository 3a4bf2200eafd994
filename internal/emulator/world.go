package emulator

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Kind is the kind of a compute resource.
type Kind string

// Compute resource kinds.
const (
	KindVM   Kind = "virtualMachines"
	KindVMSS Kind = "virtualMachineScaleSets"
)

// VMID builds the ARM resource ID of a virtual machine.
func VMID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/virtualMachines/" + name
}

// VMSSID builds the ARM resource ID of a scale set.
func VMSSID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/virtualMachineScaleSets/" + name
}

// IdentityID builds the ARM resource ID of a user-assigned identity.
func IdentityID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name
}

// ComputerName is the host name of a scale-set instance as AKS names nodes: the scale-set name
// followed by the instance ID in base 36, padded to six characters.
func ComputerName(vmss string, instance int) string {
	s := strconv.FormatInt(int64(instance), 36)
	return vmss + strings.Repeat("0", max(0, 6-len(s))) + s
}

// identity is a user-assigned managed identity. Generation grows each time an identity with the
// same ID is re-created, which is how stale assignments are detected (the delete/re-create quirk).
type identity struct {
	ID, Name, Sub, RG, Location, TenantID, ClientID, PrincipalID string
	Generation                                                   int
	FICs                                                         ficSet // deleted with the identity, as child resources are
}

// assignment is one entry of a resource's userAssignedIdentities map.
type assignment struct {
	ID                    string // as first written by the client
	PrincipalID, ClientID string
	Generation            int
	VisibleAt             time.Time // when IMDS starts serving it
}

// identityState is the identity block of a VM or VMSS.
type identityState struct {
	System            bool
	SystemPrincipalID string
	User              map[string]*assignment // lower-case ID → entry
}

func (s identityState) clone() identityState {
	c := s
	c.User = make(map[string]*assignment, len(s.User))
	for k, v := range s.User {
		a := *v
		c.User[k] = &a
	}
	return c
}

func (s identityState) typeString() string {
	switch {
	case s.System && len(s.User) > 0:
		return "SystemAssigned, UserAssigned"
	case s.System:
		return "SystemAssigned"
	case len(s.User) > 0:
		return "UserAssigned"
	}
	return "None"
}

// compute is a VM or a VMSS.
type compute struct {
	Kind               Kind
	ID, Name, Sub, RG  string
	Location, TenantID string
	VMID               string
	Identity           identityState
	ProvisioningState  string
	Op                 *operation
	ETag               int
	Instances          []*instance
	systemGen          int
}

// instance is one VMSS instance (or, for a VM, nil).
type instance struct {
	Parent       *compute
	InstanceID   string
	Name         string // "<vmss>_<id>"
	ComputerName string
	ID           string
	VMID         string
}

// host is what an IMDS endpoint serves: a VM or one VMSS instance.
type host struct {
	Key  string // canonical key: the VM or instance resource ID
	Res  *compute
	Inst *instance
}

// principal is a service principal.
type principal struct {
	AppID, ObjectID, TenantID string
	// Tenants maps every tenant the app is registered in (lower case, home included) to its
	// configured spelling, which tokens carry.
	Tenants                map[string]string
	Secrets                []string
	CertsSHA1, CertsSHA256 map[string]*certInfo
	Denied                 map[string]bool // lower identity IDs
	FICs                   ficSet
}

// objectIDIn is the principal's object ID in a tenant: a multi-tenant app has a service principal
// of its own, with its own object ID, in every tenant it is registered in.
func (p *principal) objectIDIn(tenant string) string {
	if strings.EqualFold(tenant, p.TenantID) {
		return p.ObjectID
	}
	return derivedGUID("sp:" + p.AppID + "@" + strings.ToLower(tenant))
}

// operation is an ARM long-running operation.
type operation struct {
	ID, Location, Sub string
	Res               *compute
	Start             time.Time
	Status            string // InProgress, Succeeded, Failed
	ErrCode, ErrMsg   string
}

// ARMError is an ARM error answer: HTTP status plus the {"error":{"code","message"}} body.
type ARMError struct {
	Status  int
	Code    string
	Message string
	// Target names the offending IDs, when any.
	Target []string
}

func (e *ARMError) Error() string { return fmt.Sprintf("ARM %d %s: %s", e.Status, e.Code, e.Message) }

// MaxIdentitiesPerRequest is ARM's limit on userAssignedIdentities entries in one request.
const MaxIdentitiesPerRequest = 150

// identityPatch is the decoded "identity" member of a PATCH body.
type identityPatch struct {
	Type *string           `json:"type"`
	User map[string]*json0 `json:"userAssignedIdentities"`
}

// json0 stands for the (ignored) object value of an added identity: {} adds, null removes.
type json0 struct{}

// patchInput bundles what applyIdentityPatch needs besides the current state.
type patchInput struct {
	ResourceID string
	Patch      identityPatch
	// Lookup returns the live identity for a lower-case ID.
	Lookup func(lowerID string) (*identity, bool)
	// Denied reports whether the caller may not assign this identity.
	Denied func(lowerID string) bool
	// NewSystemPrincipal mints the principal ID of a newly enabled system-assigned identity.
	NewSystemPrincipal func() string
}

// applyIdentityPatch computes the identity block after a PATCH, with ARM's semantics: {} adds,
// null removes, the type decides whether system-assigned and user-assigned identities remain, and
// IDs compare case-insensitively. Added entries get VisibleAt zero; the caller sets it when the
// operation completes. It is pure: cur is not modified.
func applyIdentityPatch(cur identityState, in patchInput) (identityState, error) {
	p := in.Patch
	if n := len(p.User); n > MaxIdentitiesPerRequest {
		return cur, &ARMError{Status: 400, Code: "BadRequest",
			Message: fmt.Sprintf("User Assigned Identities Number '%d' Assign exceed limit '%d' in one request", n, MaxIdentitiesPerRequest)}
	}
	var adds, removes []string
	for id, v := range p.User {
		if v == nil {
			removes = append(removes, id)
		} else {
			adds = append(adds, id)
		}
	}
	sort.Strings(adds)
	sort.Strings(removes)

	next := cur.clone()
	wantSystem, wantUser := cur.System, len(cur.User) > 0 || len(adds) > 0
	if p.Type != nil {
		t := strings.ToLower(strings.ReplaceAll(*p.Type, " ", ""))
		switch t {
		case "none":
			wantSystem, wantUser = false, false
		case "systemassigned":
			wantSystem, wantUser = true, false
		case "userassigned":
			wantSystem, wantUser = false, true
		case "systemassigned,userassigned":
			wantSystem, wantUser = true, true
		default:
			return cur, &ARMError{Status: 400, Code: "InvalidIdentityType",
				Message: fmt.Sprintf("The identity type '%s' is not valid. Use 'None', 'SystemAssigned', 'UserAssigned' or 'SystemAssigned, UserAssigned'.", *p.Type)}
		}
		if !wantUser && len(adds) > 0 {
			return cur, &ARMError{Status: 400, Code: "BadRequest",
				Message: fmt.Sprintf("The identity type '%s' does not allow userAssignedIdentities; use 'UserAssigned' or 'SystemAssigned, UserAssigned' to assign identities.", *p.Type)}
		}
	}

	// Authorization is checked before the identities are resolved, as ARM's linked-access check
	// runs before the resource provider sees the request.
	var denied, missing []string
	for _, id := range adds {
		l := strings.ToLower(id)
		if _, ok := cur.User[l]; ok {
			continue // already assigned: a no-op, even when stale (see the re-create quirk)
		}
		if in.Denied != nil && in.Denied(l) {
			denied = append(denied, id)
			continue
		}
		if _, ok := in.Lookup(l); !ok {
			missing = append(missing, id)
		}
	}
	if len(denied) > 0 {
		return cur, &ARMError{Status: 403, Code: "LinkedAuthorizationFailed", Target: denied,
			Message: fmt.Sprintf("The client has permission to perform action 'Microsoft.Compute/%s/write' on scope '%s'; however, it does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '%s' or the linked scope(s) are invalid.",
				kindFromID(in.ResourceID), in.ResourceID, strings.Join(denied, ","))}
	}
	if len(missing) > 0 {
		return cur, &ARMError{Status: 400, Code: "FailedIdentityOperation", Target: missing,
			Message: fmt.Sprintf("Identity operation for resource '%s' failed with error 'Failed to perform resource identity operation. Status: 'NotFound'. Response: 'The user assigned identities '%s' were not found.''.",
				in.ResourceID, strings.Join(missing, ","))}
	}

	for _, id := range removes {
		delete(next.User, strings.ToLower(id))
	}
	for _, id := range adds {
		l := strings.ToLower(id)
		if _, ok := next.User[l]; ok {
			continue
		}
		idn, _ := in.Lookup(l)
		next.User[l] = &assignment{ID: id, PrincipalID: idn.PrincipalID, ClientID: idn.ClientID, Generation: idn.Generation}
	}
	if !wantUser {
		next.User = map[string]*assignment{}
	} else if len(next.User) == 0 && p.Type != nil && len(removes) > 0 {
		return cur, &ARMError{Status: 400, Code: "BadRequest",
			Message: fmt.Sprintf("The identity type '%s' requires at least one user assigned identity; set type to 'None' or 'SystemAssigned' to remove the last one.", *p.Type)}
	}
	switch {
	case wantSystem && !cur.System:
		next.System = true
		next.SystemPrincipalID = in.NewSystemPrincipal()
	case !wantSystem:
		next.System = false
		next.SystemPrincipalID = ""
	}
	return next, nil
}

func kindFromID(id string) string {
	if strings.Contains(strings.ToLower(id), "/virtualmachinescalesets/") {
		return string(KindVMSS)
	}
	return string(KindVM)
}
