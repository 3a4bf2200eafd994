// Package binding decides which identities a pod may use: pods ↔ AzureIdentityBindings (by label
// and/or ServiceAccount, see Select) ↔ AzureIdentities (with namespaced mode and the per-identity
// annotation), the names MIC gives AzureAssignedIdentities, and AzurePodIdentityException
// matching.
//
// It is pure (plain values in, plain values out; no client-go, no Azure SDK) so that MIC and NMI
// share one definition of "this pod is bound to that identity".
package binding

import (
	"regexp"
	"slices"
	"strings"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// DefaultAssignedIdentityNamespace is where AzureAssignedIdentities live outside namespaced mode,
// as in aad-pod-identity.
const DefaultAssignedIdentityNamespace = "default"

// Options are the cluster-wide matching switches.
type Options struct {
	// ForceNamespaced is --forceNamespaced (or FORCENAMESPACED=true): every identity, binding and
	// pod must share one namespace.
	ForceNamespaced bool
	// RequireServiceAccount is --require-service-account-bindings: bindings without
	// spec.serviceAccountName grant nothing.
	RequireServiceAccount bool
}

// Namespaced reports whether id only matches bindings and pods of its own namespace: either
// forced cluster-wide or asked for by the identity's annotation.
func Namespaced(id *aadv1.AzureIdentity, force bool) bool {
	return force || id.IsNamespaced()
}

// Selector returns the value of the aadpodidbinding label ("" when absent).
func Selector(podLabels map[string]string) string {
	return podLabels[aadv1.PodLabelKey]
}

// Match is one identity a pod may use and the binding that grants it.
type Match struct {
	Binding  *aadv1.AzureIdentityBinding
	Identity *aadv1.AzureIdentity
}

// SkipReason says why a binding that selects a pod grants nothing.
type SkipReason int

const (
	// MissingIdentity: the binding names an AzureIdentity that does not exist in its namespace.
	MissingIdentity SkipReason = iota + 1
	// NamespaceMismatch: the identity is namespaced and the pod, binding and identity are not all
	// in one namespace.
	NamespaceMismatch
)

// String describes the reason for logs and events.
func (r SkipReason) String() string {
	switch r {
	case MissingIdentity:
		return "binding names an AzureIdentity that does not exist in the binding's namespace"
	case NamespaceMismatch:
		return "identity is namespaced but the pod, binding and identity are not in one namespace"
	}
	return "unknown"
}

// Skipped is a binding whose selector equals the pod's label but that grants nothing.
type Skipped struct {
	Binding *aadv1.AzureIdentityBinding
	Reason  SkipReason
}

// Result is what a pod is bound to.
type Result struct {
	// Matches are ordered by Compare on their bindings (weight, then namespace, then name), so
	// every caller sees the same order (it decides which identity wins an AzureAssignedIdentity
	// name collision).
	Matches []Match
	Skipped []Skipped
}

type candidate struct {
	binding  *aadv1.AzureIdentityBinding
	identity *aadv1.AzureIdentity // nil when missing
	// namespaced is true when the identity only matches within its own namespace.
	namespaced bool
}

type saKey struct{ namespace, name string }

// Index answers "what is this pod bound to" in time proportional to the number of bindings with
// its selector or its ServiceAccount. It is immutable after NewIndex and safe for concurrent use.
type Index struct {
	opts Options
	// bySelector holds label-only bindings by selector; bySA ServiceAccount bindings by
	// (binding namespace, ServiceAccount).
	bySelector map[string][]candidate
	bySA       map[saKey][]candidate
	// plain holds, per selector, the Result when no candidate needs a namespace check, so that
	// the common case allocates nothing per pod. Callers must not modify returned slices.
	plain map[string]*Result
	// ignored are the label-only bindings that RequireServiceAccount turns off.
	ignored []*aadv1.AzureIdentityBinding
}

var empty = &Result{}

// NewIndex indexes bindings by selector and ServiceAccount and resolves each binding's identity in
// the binding's namespace. Nil entries are ignored.
func NewIndex(bindings []*aadv1.AzureIdentityBinding, identities []*aadv1.AzureIdentity, opts Options) *Index {
	type key struct{ ns, name string }
	ids := make(map[key]*aadv1.AzureIdentity, len(identities))
	for _, id := range identities {
		if id != nil {
			ids[key{id.Namespace, id.Name}] = id
		}
	}
	sorted := make([]*aadv1.AzureIdentityBinding, 0, len(bindings))
	for _, b := range bindings {
		if b != nil {
			sorted = append(sorted, b)
		}
	}
	slices.SortFunc(sorted, Compare)
	x := &Index{opts: opts, bySelector: map[string][]candidate{}, bySA: map[saKey][]candidate{}, plain: map[string]*Result{}}
	for _, b := range sorted {
		c := candidate{binding: b, identity: ids[key{b.Namespace, b.Spec.AzureIdentity}]}
		if c.identity != nil {
			c.namespaced = Namespaced(c.identity, opts.ForceNamespaced)
		}
		switch {
		case !LabelOnly(b):
			k := saKey{b.Namespace, b.Spec.ServiceAccountName}
			x.bySA[k] = append(x.bySA[k], c)
		case b.Spec.Selector == "":
		case opts.RequireServiceAccount:
			x.ignored = append(x.ignored, b)
		default:
			x.bySelector[b.Spec.Selector] = append(x.bySelector[b.Spec.Selector], c)
		}
	}
	for sel, cs := range x.bySelector {
		needsNS := false
		for _, c := range cs {
			needsNS = needsNS || c.namespaced
		}
		if !needsNS {
			x.plain[sel] = x.resolve(Pod{Selector: sel}, cs, nil)
		}
	}
	return x
}

// Ignored returns the label-only bindings that grant nothing because Options.RequireServiceAccount
// is on, in Compare order.
func (x *Index) Ignored() []*aadv1.AzureIdentityBinding { return x.ignored }

// Lookup returns what pod is bound to (see Select for the rule).
func (x *Index) Lookup(pod Pod) *Result {
	var sa []candidate
	if len(x.bySA) > 0 {
		sa = x.bySA[saKey{pod.Namespace, PodServiceAccount(pod.ServiceAccount)}]
	}
	var byLabel []candidate
	if pod.Selector != "" {
		byLabel = x.bySelector[pod.Selector]
	}
	if len(sa) == 0 {
		if len(byLabel) == 0 {
			return empty
		}
		if r, ok := x.plain[pod.Selector]; ok {
			return r
		}
	}
	return x.resolve(pod, byLabel, sa)
}

// resolve checks each candidate with Select and the identity's namespace rule; the two lists are
// each in Compare order and are merged in that order.
func (x *Index) resolve(pod Pod, a, b []candidate) *Result {
	r := &Result{}
	for len(a) > 0 || len(b) > 0 {
		var c candidate
		if len(b) == 0 || (len(a) > 0 && Compare(a[0].binding, b[0].binding) <= 0) {
			c, a = a[0], a[1:]
		} else {
			c, b = b[0], b[1:]
		}
		if Select(c.binding, pod, x.opts) != Selected {
			continue
		}
		switch {
		case c.identity == nil:
			r.Skipped = append(r.Skipped, Skipped{Binding: c.binding, Reason: MissingIdentity})
		case c.namespaced && !IdentityAllows(c.identity, c.binding, pod.Namespace, true):
			r.Skipped = append(r.Skipped, Skipped{Binding: c.binding, Reason: NamespaceMismatch})
		default:
			r.Matches = append(r.Matches, Match{Binding: c.binding, Identity: c.identity})
		}
	}
	return r
}

// AssignedIdentityName is the AzureAssignedIdentity name for (pod, identity), as upstream:
// <pod>-<podNamespace>-<identity>. It does not include the identity's namespace, so two
// same-name identities bound to one pod collide; callers keep the first Match and warn.
func AssignedIdentityName(podName, podNamespace, identityName string) string {
	return podName + "-" + podNamespace + "-" + identityName
}

// AssignedIdentityNamespace is where the AzureAssignedIdentity for id lives: the identity's
// namespace when it is namespaced, else "default" (kept for compatibility with upstream).
func AssignedIdentityNamespace(id *aadv1.AzureIdentity, force bool) string {
	if Namespaced(id, force) {
		return id.Namespace
	}
	return DefaultAssignedIdentityNamespace
}

var resourceIDPattern = regexp.MustCompile(`(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.managedidentity/userassignedidentities/[^/]+$`)

// ValidResourceID reports whether id has the form of a user-assigned identity's ARM ID (the same
// rule the CRD enforces; objects stored before the rule existed may still violate it).
func ValidResourceID(id string) bool {
	return resourceIDPattern.MatchString(id)
}

// NormalizeID is the form in which identity IDs are compared: ARM echoes them in any case
// ("resourcegroups" vs "resourceGroups").
func NormalizeID(id string) string {
	return strings.ToLower(id)
}

// IsExcepted reports whether a pod is excepted from identity checks by an
// AzurePodIdentityException: only exceptions in the pod's own namespace count, and one is enough
// when any one of its podLabels is on the pod with an equal value (values compared
// case-insensitively, keys exactly).
func IsExcepted(podNamespace string, podLabels map[string]string, exceptions []*aadv1.AzurePodIdentityException) bool {
	for _, ex := range exceptions {
		if ex == nil || ex.Namespace != podNamespace {
			continue
		}
		for k, v := range ex.Spec.PodLabels {
			if pv, ok := podLabels[k]; ok && strings.EqualFold(pv, v) {
				return true
			}
		}
	}
	return false
}
