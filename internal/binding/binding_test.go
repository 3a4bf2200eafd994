package binding

import (
	"fmt"
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

func ident(ns, name string, namespaced bool) *aadv1.AzureIdentity {
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if namespaced {
		id.Annotations = map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}
	}
	return id
}

func bind(ns, name, identity, selector string) *aadv1.AzureIdentityBinding {
	return &aadv1.AzureIdentityBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentityBindingSpec{AzureIdentity: identity, Selector: selector},
	}
}

// names renders matches and skips as "bns/bname->ins/iname" and "bns/bname!reason" for comparison.
func names(r *Result) []string {
	out := []string{}
	for _, m := range r.Matches {
		out = append(out, fmt.Sprintf("%s/%s->%s/%s", m.Binding.Namespace, m.Binding.Name, m.Identity.Namespace, m.Identity.Name))
	}
	for _, s := range r.Skipped {
		out = append(out, fmt.Sprintf("%s/%s!%d", s.Binding.Namespace, s.Binding.Name, s.Reason))
	}
	return out
}

func TestLookup(t *testing.T) {
	cases := []struct {
		name       string
		bindings   []*aadv1.AzureIdentityBinding
		identities []*aadv1.AzureIdentity
		force      bool
		podNS, sel string
		want       []string
	}{
		{name: "selector equal → match", bindings: []*aadv1.AzureIdentityBinding{bind("a", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", false)}, podNS: "a", sel: "sel", want: []string{"a/b1->a/id1"}},
		{name: "selector differs → nothing", bindings: []*aadv1.AzureIdentityBinding{bind("a", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", false)}, podNS: "a", sel: "Sel", want: []string{}},
		{name: "empty label → nothing", bindings: []*aadv1.AzureIdentityBinding{bind("a", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", false)}, podNS: "a", sel: "", want: []string{}},
		{name: "cross-namespace allowed by default", bindings: []*aadv1.AzureIdentityBinding{bind("b", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("b", "id1", false)}, podNS: "a", sel: "sel", want: []string{"b/b1->b/id1"}},
		{name: "identity looked up in the binding's namespace only", bindings: []*aadv1.AzureIdentityBinding{bind("b", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", false)}, podNS: "a", sel: "sel", want: []string{"b/b1!1"}},
		{name: "missing identity is skipped with a reason", bindings: []*aadv1.AzureIdentityBinding{bind("a", "b1", "gone", "sel"), bind("a", "b2", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", false)}, podNS: "a", sel: "sel", want: []string{"a/b2->a/id1", "a/b1!1"}},
		{name: "forceNamespaced: other namespace pod skipped", force: true, bindings: []*aadv1.AzureIdentityBinding{bind("b", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("b", "id1", false)}, podNS: "a", sel: "sel", want: []string{"b/b1!2"}},
		{name: "forceNamespaced: same namespace matches", force: true, bindings: []*aadv1.AzureIdentityBinding{bind("a", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", false)}, podNS: "a", sel: "sel", want: []string{"a/b1->a/id1"}},
		{name: "annotation: other namespace pod skipped", bindings: []*aadv1.AzureIdentityBinding{bind("b", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("b", "id1", true)}, podNS: "a", sel: "sel", want: []string{"b/b1!2"}},
		{name: "annotation: same namespace matches, unannotated other still cross-namespace",
			bindings:   []*aadv1.AzureIdentityBinding{bind("a", "b1", "id1", "sel"), bind("c", "b2", "id2", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", true), ident("c", "id2", false)}, podNS: "a", sel: "sel",
			want: []string{"a/b1->a/id1", "c/b2->c/id2"}},
		{name: "several identities on one selector, ordered by binding namespace then name",
			bindings:   []*aadv1.AzureIdentityBinding{bind("z", "b", "i3", "sel"), bind("a", "c", "i2", "sel"), bind("a", "a", "i1", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "i1", false), ident("a", "i2", false), ident("z", "i3", false)},
			podNS:      "a", sel: "sel", want: []string{"a/a->a/i1", "a/c->a/i2", "z/b->z/i3"}},
		{name: "same-name identities in two namespaces both match (caller resolves the name collision)",
			bindings:   []*aadv1.AzureIdentityBinding{bind("b", "x", "id", "sel"), bind("a", "x", "id", "sel")},
			identities: []*aadv1.AzureIdentity{ident("a", "id", false), ident("b", "id", false)},
			podNS:      "a", sel: "sel", want: []string{"a/x->a/id", "b/x->b/id"}},
		{name: "binding with empty selector never matches", bindings: []*aadv1.AzureIdentityBinding{bind("a", "b1", "id1", "")},
			identities: []*aadv1.AzureIdentity{ident("a", "id1", false)}, podNS: "a", sel: "", want: []string{}},
		{name: "nil entries ignored", bindings: []*aadv1.AzureIdentityBinding{nil, bind("a", "b1", "id1", "sel")},
			identities: []*aadv1.AzureIdentity{nil, ident("a", "id1", false)}, podNS: "a", sel: "sel", want: []string{"a/b1->a/id1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex(tc.bindings, tc.identities, Options{ForceNamespaced: tc.force})
			got := names(x.Lookup(Pod{Namespace: tc.podNS, Selector: tc.sel}))
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Lookup(%q, %q) = %v, want %v", tc.podNS, tc.sel, got, tc.want)
			}
		})
	}
}

func TestAssignedIdentityNameAndNamespace(t *testing.T) {
	if got := AssignedIdentityName("web-1", "shop", "reader"); got != "web-1-shop-reader" {
		t.Fatalf("name = %q, want web-1-shop-reader", got)
	}
	cases := []struct {
		id    *aadv1.AzureIdentity
		force bool
		want  string
	}{
		{ident("shop", "reader", false), false, "default"},
		{ident("shop", "reader", true), false, "shop"},
		{ident("shop", "reader", false), true, "shop"},
	}
	for _, tc := range cases {
		if got := AssignedIdentityNamespace(tc.id, tc.force); got != tc.want {
			t.Errorf("AssignedIdentityNamespace(annotated=%v, force=%v) = %q, want %q", tc.id.IsNamespaced(), tc.force, got, tc.want)
		}
	}
}

func TestValidResourceID(t *testing.T) {
	cases := map[string]bool{
		"/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1": true,
		"/subscriptions/s/resourceGroups/rg/providers/microsoft.managedidentity/userassignedidentities/id1": true,
		"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities":     false,
		"subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x":    false,
		"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x":                  false,
		"": false,
	}
	for id, want := range cases {
		if got := ValidResourceID(id); got != want {
			t.Errorf("ValidResourceID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestIsExcepted(t *testing.T) {
	ex := func(ns string, labels map[string]string) *aadv1.AzurePodIdentityException {
		return &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "e"},
			Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: labels}}
	}
	exs := []*aadv1.AzurePodIdentityException{nil, ex("kube-system", map[string]string{"app": "MIC", "tier": "x"})}
	cases := []struct {
		name   string
		ns     string
		labels map[string]string
		want   bool
	}{
		{"one label equal", "kube-system", map[string]string{"app": "mic"}, true},
		{"value case-insensitive", "kube-system", map[string]string{"app": "Mic"}, true},
		{"any one label is enough", "kube-system", map[string]string{"app": "other", "tier": "x"}, true},
		{"key case-sensitive", "kube-system", map[string]string{"App": "mic"}, false},
		{"value differs", "kube-system", map[string]string{"app": "nmi"}, false},
		{"other namespace does not count", "default", map[string]string{"app": "mic"}, false},
		{"no labels", "kube-system", nil, false},
	}
	for _, tc := range cases {
		if got := IsExcepted(tc.ns, tc.labels, exs); got != tc.want {
			t.Errorf("%s: IsExcepted = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLookupResultIsStableAcrossCalls(t *testing.T) {
	x := NewIndex([]*aadv1.AzureIdentityBinding{bind("a", "b1", "id1", "sel")}, []*aadv1.AzureIdentity{ident("a", "id1", false)}, Options{})
	r1, r2 := x.Lookup(Pod{Namespace: "a", Selector: "sel"}), x.Lookup(Pod{Namespace: "other", Selector: "sel"})
	if !reflect.DeepEqual(names(r1), names(r2)) || len(r1.Matches) != 1 {
		t.Fatalf("non-namespaced lookups differ by pod namespace: %v vs %v", names(r1), names(r2))
	}
}
