package binding

import (
	"reflect"
	"strings"
	"testing"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

func saBind(ns, name, identity, selector, sa string, weight int) *aadv1.AzureIdentityBinding {
	b := bind(ns, name, identity, selector)
	b.Spec.ServiceAccountName, b.Spec.Weight = sa, weight
	return b
}

// The rule itself: every combination of selector / ServiceAccount on the binding against the
// pod's namespace, label and ServiceAccount.
func TestSelect(t *testing.T) {
	cases := []struct {
		name    string
		b       *aadv1.AzureIdentityBinding
		pod     Pod
		require bool
		want    Verdict
	}{
		{"label only: label equal", saBind("a", "b", "id", "sel", "", 0), Pod{"a", "sel", "x"}, false, Selected},
		{"label only: other namespace too (as upstream)", saBind("a", "b", "id", "sel", "", 0), Pod{"z", "sel", "x"}, false, Selected},
		{"label only: label differs", saBind("a", "b", "id", "sel", "", 0), Pod{"a", "Sel", "x"}, false, NoMatch},
		{"label only: no label", saBind("a", "b", "id", "sel", "", 0), Pod{"a", "", "x"}, false, NoMatch},
		{"label only, require on: ignored", saBind("a", "b", "id", "sel", "", 0), Pod{"a", "sel", "x"}, true, IgnoredLabelOnly},
		{"label only, require on, label differs: no match", saBind("a", "b", "id", "sel", "", 0), Pod{"a", "other", "x"}, true, NoMatch},
		{"SA only: same namespace and SA", saBind("a", "b", "id", "", "app", 0), Pod{"a", "", "app"}, false, Selected},
		{"SA only: label irrelevant", saBind("a", "b", "id", "", "app", 0), Pod{"a", "whatever", "app"}, false, Selected},
		{"SA only: other SA", saBind("a", "b", "id", "", "app", 0), Pod{"a", "", "other"}, false, NoMatch},
		{"SA only: same SA name in another namespace", saBind("a", "b", "id", "", "app", 0), Pod{"z", "", "app"}, false, NoMatch},
		{"SA only: pod without SA runs as default", saBind("a", "b", "id", "", "default", 0), Pod{"a", "", ""}, false, Selected},
		{"SA only: binding for default does not take a named SA", saBind("a", "b", "id", "", "default", 0), Pod{"a", "", "app"}, false, NoMatch},
		{"SA only, require on: selected", saBind("a", "b", "id", "", "app", 0), Pod{"a", "", "app"}, true, Selected},
		{"SA and label: both match", saBind("a", "b", "id", "sel", "app", 0), Pod{"a", "sel", "app"}, false, Selected},
		{"SA and label: label missing", saBind("a", "b", "id", "sel", "app", 0), Pod{"a", "", "app"}, false, NoMatch},
		{"SA and label: SA differs", saBind("a", "b", "id", "sel", "app", 0), Pod{"a", "sel", "other"}, false, NoMatch},
		{"SA and label: other namespace", saBind("a", "b", "id", "sel", "app", 0), Pod{"z", "sel", "app"}, false, NoMatch},
		{"SA and label, require on: selected", saBind("a", "b", "id", "sel", "app", 0), Pod{"a", "sel", "app"}, true, Selected},
		{"neither (old object): nothing", saBind("a", "b", "id", "", "", 0), Pod{"a", "", "default"}, false, NoMatch},
	}
	for _, tc := range cases {
		if got := Select(tc.b, tc.pod, Options{RequireServiceAccount: tc.require}); got != tc.want {
			t.Errorf("%s: Select = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// The Index applies Select, the namespaced rule and the weight order.
func TestLookupServiceAccountBindings(t *testing.T) {
	ids := []*aadv1.AzureIdentity{ident("a", "id1", false), ident("a", "id2", false), ident("b", "id3", false), ident("a", "ns", true)}
	cases := []struct {
		name     string
		bindings []*aadv1.AzureIdentityBinding
		opts     Options
		pod      Pod
		want     []string
		ignored  int
	}{
		{name: "SA binding matches its namespace's pod without a label",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "b1", "id1", "", "app", 0)},
			pod:      Pod{"a", "", "app"}, want: []string{"a/b1->a/id1"}},
		{name: "same label, other SA: nothing",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "b1", "id1", "sel", "app", 0)},
			pod:      Pod{"a", "sel", "intruder"}, want: []string{}},
		{name: "same label and SA name, other namespace: nothing",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "b1", "id1", "sel", "app", 0)},
			pod:      Pod{"z", "sel", "app"}, want: []string{}},
		{name: "binding in another namespace naming the pod's SA name matches nothing",
			bindings: []*aadv1.AzureIdentityBinding{saBind("b", "b3", "id3", "", "app", 0)},
			pod:      Pod{"a", "", "app"}, want: []string{}},
		{name: "label and SA bindings together, ordered by weight then namespace/name",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "low", "id1", "sel", "", 0), saBind("a", "high", "id2", "", "app", 5), saBind("b", "mid", "id3", "sel", "", 3)},
			pod:      Pod{"a", "sel", "app"}, want: []string{"a/high->a/id2", "b/mid->b/id3", "a/low->a/id1"}},
		{name: "equal weights: namespace then name",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "z", "id1", "", "app", 1), saBind("a", "m", "id2", "sel", "", 1)},
			pod:      Pod{"a", "sel", "app"}, want: []string{"a/m->a/id2", "a/z->a/id1"}},
		{name: "require: label-only binding ignored, SA binding kept",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "label", "id1", "sel", "", 9), saBind("a", "sa", "id2", "", "app", 0)},
			opts:     Options{RequireServiceAccount: true},
			pod:      Pod{"a", "sel", "app"}, want: []string{"a/sa->a/id2"}, ignored: 1},
		{name: "SA binding to a namespaced identity works in its namespace (forceNamespaced)",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "b1", "ns", "", "app", 0)}, opts: Options{ForceNamespaced: true},
			pod: Pod{"a", "", "app"}, want: []string{"a/b1->a/ns"}},
		{name: "SA binding with a missing identity is skipped with a reason",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "b1", "gone", "", "app", 0)},
			pod:      Pod{"a", "", "app"}, want: []string{"a/b1!1"}},
		{name: "pod without SA matches a binding for default",
			bindings: []*aadv1.AzureIdentityBinding{saBind("a", "b1", "id1", "", "default", 0)},
			pod:      Pod{"a", "", ""}, want: []string{"a/b1->a/id1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex(tc.bindings, ids, tc.opts)
			if got := names(x.Lookup(tc.pod)); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Lookup(%+v) = %v, want %v", tc.pod, got, tc.want)
			}
			if len(x.Ignored()) != tc.ignored {
				t.Fatalf("Ignored() = %d bindings, want %d", len(x.Ignored()), tc.ignored)
			}
		})
	}
}

func TestIgnoredMessageNamesTheBindingAndTheFix(t *testing.T) {
	msg := IgnoredMessage(saBind("shop", "web", "id", "web", "", 0))
	for _, want := range []string{"shop/web", "spec.serviceAccountName", "ignored"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not contain %q", msg, want)
		}
	}
}
