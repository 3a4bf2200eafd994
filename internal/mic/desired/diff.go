package desired

import (
	"cmp"
	"slices"
	"sort"
	"strings"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
)

// Pair is a desired AAI and the object that exists for it.
type Pair struct {
	Want *AAI
	Have *aadv1.AzureAssignedIdentity
}

// Changes is the difference between one group's desired AAIs and the existing objects.
type Changes struct {
	// Create: desired, no object yet.
	Create []*AAI
	// Update: an object exists under the name but for another identity/binding version, node or pod.
	Update []Pair
	// Keep: the object matches; its status may still need to move to Assigned.
	Keep []Pair
	// Delete: objects no longer desired, or being deleted (their finalizer must go).
	Delete []*aadv1.AzureAssignedIdentity
}

// Empty reports whether nothing changes in Kubernetes.
func (c *Changes) Empty() bool {
	return len(c.Create) == 0 && len(c.Update) == 0 && len(c.Delete) == 0
}

// Diff compares desired AAIs with existing objects of one group. Existing objects that are being
// deleted always land in Delete, even when still desired: the finalizer is removed and the object
// re-created afterwards.
func Diff(want []*AAI, have []*aadv1.AzureAssignedIdentity) Changes {
	var c Changes
	haveByKey := make(map[Key]*aadv1.AzureAssignedIdentity, len(have))
	for _, h := range have {
		haveByKey[Key{Namespace: h.Namespace, Name: h.Name}] = h
	}
	seen := make(map[Key]bool, len(want))
	for _, w := range want {
		seen[w.Key] = true
		h, ok := haveByKey[w.Key]
		switch {
		case !ok:
			c.Create = append(c.Create, w)
		case h.DeletionTimestamp != nil:
			c.Delete = append(c.Delete, h)
		case Matches(w, h):
			c.Keep = append(c.Keep, Pair{w, h})
		default:
			c.Update = append(c.Update, Pair{w, h})
		}
	}
	for _, h := range have {
		if !seen[Key{Namespace: h.Namespace, Name: h.Name}] {
			c.Delete = append(c.Delete, h)
		}
	}
	slices.SortFunc(c.Delete, func(a, b *aadv1.AzureAssignedIdentity) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return c
}

// Matches reports whether an existing object is up to date for w: same pod, node, and the same
// versions of identity and binding (any edit of either updates the object, as upstream).
func Matches(w *AAI, h *aadv1.AzureAssignedIdentity) bool {
	s := &h.Spec
	if s.Pod != w.PodName || s.PodNamespace != w.PodNamespace || s.NodeName != w.NodeName ||
		h.Labels[aadv1.AssignedIdentityNodeLabel] != w.NodeName {
		return false
	}
	if s.AzureIdentityRef == nil || s.AzureBindingRef == nil {
		return false
	}
	return sameVersion(s.AzureIdentityRef.Namespace, s.AzureIdentityRef.Name, s.AzureIdentityRef.ResourceVersion, w.Identity.Namespace, w.Identity.Name, w.Identity.ResourceVersion) &&
		sameVersion(s.AzureBindingRef.Namespace, s.AzureBindingRef.Name, s.AzureBindingRef.ResourceVersion, w.Binding.Namespace, w.Binding.Name, w.Binding.ResourceVersion)
}

func sameVersion(ns string, name, rv, wns, wname, wrv string) bool {
	return ns == wns && name == wname && rv == wrv
}

// WrittenByAnnotation marks the AzureAssignedIdentities this MIC wrote. Objects without it were
// written by an earlier MIC (aad-pod-identity's): the identities they name were assigned by it.
const (
	WrittenByAnnotation = "podidentity.io/written-by"
	WrittenByValue      = "mic"
)

// Inherited returns the identities (lower-cased ID → client ID) that Assigned objects written by
// an earlier MIC name and that are not in owned: candidates for adoption, if still on the VM/VMSS.
func Inherited(have []*aadv1.AzureAssignedIdentity, owned map[string]string) map[string]string {
	var out map[string]string
	for _, h := range have {
		if h.Annotations[WrittenByAnnotation] != "" || h.Status.Status != aadv1.AssignedIDAssigned {
			continue
		}
		id := IdentityIDOf(h)
		if _, mine := owned[id]; id == "" || mine {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[id] = h.Spec.AzureIdentityRef.Spec.ClientID
	}
	return out
}

// IdentityIDOf returns the lower-cased identity ID an existing object assigns ("" for service
// principals, federated identities or objects without an identity copy).
func IdentityIDOf(h *aadv1.AzureAssignedIdentity) string {
	if h.Spec.AzureIdentityRef == nil || !needsAzure(h.Spec.AzureIdentityRef) {
		return ""
	}
	return strings.ToLower(h.Spec.AzureIdentityRef.Spec.ResourceID)
}

// PlanInput is what PlanIdentities needs for one compute resource.
type PlanInput struct {
	// Desired maps lower-cased identity IDs the resource needs to their client IDs.
	Desired map[string]string
	// Current is ARM's view (fresh read or last known).
	Current cloud.Identities
	// Owned maps identity IDs MIC itself put on the resource to their client IDs: only those are
	// ever removed.
	Owned map[string]string
	// Immutable holds lower-cased client IDs never to remove (--immutable-user-msis and the
	// cluster identity).
	Immutable map[string]bool
	// Hold reports identities not to add now (quarantined after ARM refused them). It must not
	// have side effects: NeedsChange calls it too.
	Hold func(id string) bool
}

// adds reports whether the desired identity id is to be added (true, false) or held (false, true).
func (in *PlanInput) adds(id string) (add, held bool) {
	if in.Current.Has(id) {
		return false, false
	}
	if in.Hold != nil && in.Hold(id) {
		return false, true
	}
	return true, false
}

// removes reports whether the owned identity id is to be removed.
func (in *PlanInput) removes(id, ownedClient string) bool {
	if _, want := in.Desired[id]; want || !in.Current.Has(id) {
		return false
	}
	return !in.Immutable[strings.ToLower(ownedClient)] && !in.Immutable[strings.ToLower(in.Current.UserAssigned[id])]
}

// NeedsChange reports whether PlanIdentities(in) would call ARM, without building the plan: MIC
// plans on ARM's last known state and reads ARM first only when this says a change is due (a
// PATCH is always based on a fresh read).
func NeedsChange(in PlanInput) bool {
	for id := range in.Desired {
		if add, _ := in.adds(id); add {
			return true
		}
	}
	for id, ownedClient := range in.Owned {
		if in.removes(id, ownedClient) {
			return true
		}
	}
	return false
}

// Plan is one resource's identity change.
type Plan struct {
	Add, Remove []string
	// Held are desired identities not added because Hold said so.
	Held []string
}

// Empty reports whether ARM needs no call.
func (p Plan) Empty() bool { return len(p.Add) == 0 && len(p.Remove) == 0 }

// PlanIdentities decides what to add to and remove from one VM/VMSS. An identity is removed only
// when MIC added it, nothing desired on the resource needs it, it is not immutable (by client ID,
// from the identity copy, ARM or the ownership record), and it is still there.
func PlanIdentities(in PlanInput) Plan {
	var p Plan
	for id := range in.Desired {
		switch add, held := in.adds(id); {
		case add:
			p.Add = append(p.Add, id)
		case held:
			p.Held = append(p.Held, id)
		}
	}
	for id, ownedClient := range in.Owned {
		if in.removes(id, ownedClient) {
			p.Remove = append(p.Remove, id)
		}
	}
	sort.Strings(p.Add)
	sort.Strings(p.Remove)
	sort.Strings(p.Held)
	return p
}

// Chunk splits a plan into PATCH-sized pieces of at most max entries (adds and removes together),
// removals first so that a resource close to its limit makes room before it grows.
func Chunk(p Plan, max int) []Plan {
	if max <= 0 {
		max = cloud.MaxIdentitiesPerRequest
	}
	var out []Plan
	cur := Plan{}
	n := 0
	flush := func() {
		if n > 0 {
			out = append(out, cur)
			cur, n = Plan{}, 0
		}
	}
	for _, id := range p.Remove {
		if n == max {
			flush()
		}
		cur.Remove = append(cur.Remove, id)
		n++
	}
	for _, id := range p.Add {
		if n == max {
			flush()
		}
		cur.Add = append(cur.Add, id)
		n++
	}
	flush()
	return out
}

// Object builds the AzureAssignedIdentity for a in the given state: label nodename, MIC's
// finalizer, and copies of identity and binding (without managedFields, which only add bytes).
func (a *AAI) Object(state aadv1.AssignedIdentityState) *aadv1.AzureAssignedIdentity {
	id := a.Identity.DeepCopy()
	id.ManagedFields = nil
	// Embedded resources need their type (objects from a typed cache come without it).
	id.APIVersion, id.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentity"
	b := a.Binding.DeepCopy()
	b.ManagedFields = nil
	b.APIVersion, b.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentityBinding"
	o := &aadv1.AzureAssignedIdentity{
		Spec: aadv1.AzureAssignedIdentitySpec{
			AzureIdentityRef: id, AzureBindingRef: b,
			Pod: a.PodName, PodNamespace: a.PodNamespace, NodeName: a.NodeName,
		},
		Status: aadv1.AzureAssignedIdentityStatus{Status: state, AvailableReplicas: 1},
	}
	o.APIVersion, o.Kind = aadv1.SchemeGroupVersion.String(), "AzureAssignedIdentity"
	o.Namespace, o.Name = a.Namespace, a.Name
	o.Labels = map[string]string{aadv1.AssignedIdentityNodeLabel: a.NodeName}
	o.Annotations = map[string]string{WrittenByAnnotation: WrittenByValue}
	o.Finalizers = []string{aadv1.AssignedIdentityFinalizer}
	return o
}
