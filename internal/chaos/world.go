package chaos

import (
	"strconv"
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
	UID            types.UID
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
	UID                      types.UID
	Identity                 string
	Selector, ServiceAccount string
	Changed                  time.Time // last change recorded by the apiserver (see Pod.Changed)
}

// Identity is what the checker knows of an AzureIdentity.
type Identity struct {
	Key        types.NamespacedName
	UID        types.UID
	ClientID   string
	ResourceID string
	Namespaced bool
	// Federated identities need no VM assignment: MIC must leave them off every VM.
	Federated bool
	Changed   time.Time // last change recorded by the apiserver (see Pod.Changed)
}

// World is the checker's current view of the cluster's pods, bindings and identities.
//
// It has two sources: the checker's watch, and the answers to the workload's own writes (the
// workload is the only writer of labels, bindings and identities). The watch can lag tens of
// seconds after an apiserver restart and a relist compresses history (a binding deleted and
// re-created, a pod relabelled and back, are then never seen); the write answers fill that in.
// The two are merged per object by resourceVersion, so an older watch event never overwrites a
// newer write. Apply* set the maps; setting them directly (unit tests) bypasses the merge.
type World struct {
	ForceNamespaced bool
	Pods            map[types.NamespacedName]Pod
	Bindings        map[types.NamespacedName]Binding
	Identities      map[types.NamespacedName]Identity
	versions        map[ObjectRef]objVersion
}

// Kind is the kind of object the world tracks.
type Kind int

// Kinds of tracked objects.
const (
	KindPod Kind = iota
	KindBinding
	KindIdentity
)

// ObjectRef names one tracked object.
type ObjectRef struct {
	Kind Kind
	Key  types.NamespacedName
}

// objVersion is the newest state applied for an object; a deletion keeps its resourceVersion
// (a tombstone) so that an older event cannot bring the object back.
type objVersion struct {
	rv      int64
	uid     types.UID
	deleted bool
}

// ParseRV reads a resourceVersion as an integer. Kubernetes says resourceVersions are opaque;
// comparing them as integers is acceptable for this test tool only, because its apiserver is
// backed by etcd, whose revisions grow monotonically. 0 means unreadable.
func ParseRV(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// NewWorld returns an empty world.
func NewWorld(forceNamespaced bool) *World {
	return &World{ForceNamespaced: forceNamespaced, Pods: map[types.NamespacedName]Pod{},
		Bindings: map[types.NamespacedName]Binding{}, Identities: map[types.NamespacedName]Identity{}, versions: map[ObjectRef]objVersion{}}
}

// admit reports whether a state of ref (incarnation uid) at resourceVersion rv is newer than what
// the world holds, and records it. A deletion at rv is admitted when nothing newer than rv was
// applied, or when it is the deletion of the very incarnation the world holds (same UID): a watch
// that finds an object gone on relist reports its last known state, whose rv may be older than a
// write the checker saw since, yet that incarnation is gone all the same (a write cannot bring a
// UID back; a re-created object has a new one). An unreadable rv (0) is always admitted.
func (w *World) admit(ref ObjectRef, uid types.UID, rv int64, deleted bool) bool {
	have, ok := w.versions[ref]
	if ok && rv != 0 {
		goneNow := deleted && !have.deleted && uid != "" && uid == have.uid
		if !goneNow && (rv < have.rv || (rv == have.rv && (!deleted || have.deleted))) {
			return false
		}
	}
	// The tombstone keeps the newest rv seen, so that older events of that incarnation stay out.
	w.versions[ref] = objVersion{rv: max(rv, have.rv), uid: uid, deleted: deleted}
	return true
}

// ApplyPod records a state of a pod (or its deletion) at resourceVersion rv unless the world
// already holds a newer one; it reports whether the world changed.
func (w *World) ApplyPod(p Pod, rv int64, deleted bool) bool {
	return apply(w, w.Pods, KindPod, p.Key, p.UID, p, rv, deleted)
}

// ApplyBinding is ApplyPod for a binding.
func (w *World) ApplyBinding(b Binding, rv int64, deleted bool) bool {
	return apply(w, w.Bindings, KindBinding, b.Key, b.UID, b, rv, deleted)
}

// ApplyIdentity is ApplyPod for an identity.
func (w *World) ApplyIdentity(id Identity, rv int64, deleted bool) bool {
	return apply(w, w.Identities, KindIdentity, id.Key, id.UID, id, rv, deleted)
}

// apply is the one merge rule of the Apply methods: admit by resourceVersion, then store or drop.
func apply[T any](w *World, m map[types.NamespacedName]T, kind Kind, key types.NamespacedName, uid types.UID, v T, rv int64, deleted bool) bool {
	if !w.admit(ObjectRef{kind, key}, uid, rv, deleted) {
		return false
	}
	if deleted {
		delete(m, key)
	} else {
		m[key] = v
	}
	return true
}

// Versions returns the resourceVersions of the existing objects of a kind (for comparing with
// a fresh read).
func (w *World) Versions(k Kind) map[types.NamespacedName]int64 {
	out := map[types.NamespacedName]int64{}
	for ref, v := range w.versions {
		if ref.Kind == k && !v.deleted {
			out[ref.Key] = v.rv
		}
	}
	return out
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
