package binding

import (
	"cmp"
	"fmt"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// DefaultServiceAccount is the ServiceAccount of a pod whose spec names none.
const DefaultServiceAccount = "default"

// Pod is what matching needs of a pod.
type Pod struct {
	Namespace string
	// Selector is the value of the aadpodidbinding label ("" when absent).
	Selector string
	// ServiceAccount is spec.serviceAccountName; "" counts as DefaultServiceAccount.
	ServiceAccount string
}

// PodServiceAccount is the ServiceAccount a pod runs as, given its spec.serviceAccountName.
func PodServiceAccount(specName string) string {
	if specName == "" {
		return DefaultServiceAccount
	}
	return specName
}

// Verdict is what a binding makes of a pod, before its identity is looked at.
type Verdict uint8

const (
	// NoMatch: the binding does not select the pod.
	NoMatch Verdict = iota
	// Selected: the binding selects the pod.
	Selected
	// IgnoredLabelOnly: the binding's selector equals the pod's label, but it binds by label alone
	// and Options.RequireServiceAccount is on, so it grants nothing.
	IgnoredLabelOnly
)

// Select is the one rule of which pods a binding selects, used by MIC and NMI alike:
//   - spec.serviceAccountName set: only pods in the binding's own namespace that run as that
//     ServiceAccount, whatever the namespaced setting (a ServiceAccount name means nothing in
//     another namespace); with spec.selector also set, the label must match as well;
//   - only spec.selector set: pods whose aadpodidbinding label equals it, as in aad-pod-identity
//     (IgnoredLabelOnly instead when opts.RequireServiceAccount);
//   - neither: nothing (the CRD refuses such bindings; older objects may exist).
//
// It allocates nothing: NMI calls it on every token request.
func Select(b *aadv1.AzureIdentityBinding, pod Pod, opts Options) Verdict {
	sel := b.Spec.Selector
	if sa := b.Spec.ServiceAccountName; sa != "" {
		if pod.Namespace != b.Namespace || PodServiceAccount(pod.ServiceAccount) != sa {
			return NoMatch
		}
		if sel != "" && sel != pod.Selector {
			return NoMatch
		}
		return Selected
	}
	if sel == "" || sel != pod.Selector {
		return NoMatch
	}
	if opts.RequireServiceAccount {
		return IgnoredLabelOnly
	}
	return Selected
}

// LabelOnly reports whether b binds by label alone (no spec.serviceAccountName).
func LabelOnly(b *aadv1.AzureIdentityBinding) bool { return b.Spec.ServiceAccountName == "" }

// IdentityAllows reports whether id (found in b's namespace) may serve a pod of podNamespace that
// b selects: a namespaced identity (forced or by annotation) needs pod, binding and identity in
// one namespace.
func IdentityAllows(id *aadv1.AzureIdentity, b *aadv1.AzureIdentityBinding, podNamespace string, force bool) bool {
	return !Namespaced(id, force) || (id.Namespace == b.Namespace && b.Namespace == podNamespace)
}

// Compare orders bindings by preference: higher spec.weight first, then namespace, then name.
// A token request that names no identity gets the first binding's identity.
func Compare(a, b *aadv1.AzureIdentityBinding) int {
	if c := cmp.Compare(b.Spec.Weight, a.Spec.Weight); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

// IgnoredMessage says why a label-only binding grants nothing under RequireServiceAccount and how
// to fix it.
func IgnoredMessage(b *aadv1.AzureIdentityBinding) string {
	return fmt.Sprintf("AzureIdentityBinding %s/%s binds pods by the %s label alone (selector %q), which any pod can copy; ServiceAccount bindings are required on this cluster, so it is ignored: set spec.serviceAccountName to the ServiceAccount of the pods it is meant for (in namespace %s)",
		b.Namespace, b.Name, aadv1.PodLabelKey, b.Spec.Selector, b.Namespace)
}
