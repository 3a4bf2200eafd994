package chaos

import (
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// The checker's own reading of the binding rules (docs/concepts.md), written independently of
// MIC's and NMI's code so that a bug there is not copied into the oracle:
//   - a binding names an AzureIdentity in its own namespace;
//   - it matches a pod whose label aadpodidbinding equals its selector (when set) and, when it
//     names a ServiceAccount, a pod in the binding's namespace running as that ServiceAccount;
//   - with namespaced matching (the identity's Behavior annotation, or --forceNamespaced) the
//     pod must also be in the binding's namespace.

// PodLabel is the pod label bindings select on.
const PodLabel = "aadpodidbinding"

// Pod is what the checker knows of a pod.
type Pod struct {
	Key            types.NamespacedName
	Selector       string // value of PodLabel ("" when absent)
	ServiceAccount string // "default" when the pod names none
	Node           string
	Running        bool
	// Requested is the client ID the pod's application names (AZURE_CLIENT_ID), "" for none.
	Requested string
	// Changed is when the apiserver last recorded a change of what binds the pod (its labels;
	// creation), from metadata (second resolution, so at most a second early).
	Changed time.Time
}

// Binding is what the checker knows of an AzureIdentityBinding.
type Binding struct {
	Key                      types.NamespacedName
	Identity                 string
	Selector, ServiceAccount string
	Changed                  time.Time // last change recorded by the apiserver (see Pod.Changed)
}

// Identity is what the checker knows of an AzureIdentity.
type Identity struct {
	Key        types.NamespacedName
	ClientID   string
	ResourceID string
	Namespaced bool
	// Federated identities need no VM assignment: MIC must leave them off every VM.
	Federated bool
	Changed   time.Time // last change recorded by the apiserver (see Pod.Changed)
}

// World is the checker's current view of the cluster's pods, bindings and identities.
type World struct {
	ForceNamespaced bool
	Pods            map[types.NamespacedName]Pod
	Bindings        map[types.NamespacedName]Binding
	Identities      map[types.NamespacedName]Identity
}

// NewWorld returns an empty world.
func NewWorld(forceNamespaced bool) *World {
	return &World{ForceNamespaced: forceNamespaced, Pods: map[types.NamespacedName]Pod{},
		Bindings: map[types.NamespacedName]Binding{}, Identities: map[types.NamespacedName]Identity{}}
}

func (w *World) matches(b Binding, id Identity, p Pod) bool {
	if b.Selector == "" && b.ServiceAccount == "" {
		return false
	}
	if b.Selector != "" && p.Selector != b.Selector {
		return false
	}
	if b.ServiceAccount != "" && (p.Key.Namespace != b.Key.Namespace || p.ServiceAccount != b.ServiceAccount) {
		return false
	}
	if (w.ForceNamespaced || id.Namespaced) && p.Key.Namespace != b.Key.Namespace {
		return false
	}
	return true
}

// Bound returns the identities the pod is bound to, keyed by lower-case client ID.
func (w *World) Bound(p Pod) map[string]Identity {
	out := map[string]Identity{}
	for cid, b := range w.bound(p) {
		out[cid] = b.id
	}
	return out
}

type boundBy struct {
	id Identity
	// since is the latest apiserver-recorded change among the pod, binding and identity: the
	// pair cannot have become bound later than that.
	since time.Time
}

func (w *World) bound(p Pod) map[string]boundBy {
	out := map[string]boundBy{}
	for _, b := range w.Bindings {
		id, ok := w.Identities[types.NamespacedName{Namespace: b.Key.Namespace, Name: b.Identity}]
		if !ok || id.ClientID == "" || !w.matches(b, id, p) {
			continue
		}
		since := latest(p.Changed, b.Changed, id.Changed)
		cid := strings.ToLower(id.ClientID)
		if have, ok := out[cid]; ok && have.since.Before(since) {
			since = have.since
		}
		out[cid] = boundBy{id: id, since: since}
	}
	return out
}

func latest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if t.After(out) {
			out = t
		}
	}
	return out
}

// WantsToken reports whether the pod should get tokens: it is bound, and bound to the identity
// it names when it names one.
func (w *World) WantsToken(p Pod) bool {
	b := w.Bound(p)
	if p.Requested != "" {
		_, ok := b[strings.ToLower(p.Requested)]
		return ok
	}
	return len(b) > 0
}
