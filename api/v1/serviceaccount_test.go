package v1_test

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/testenv"
)

// A binding may name a ServiceAccount instead of, or as well as, a selector; the field is stored
// and read back, and weight is kept.
func TestServiceAccountBindingsAreAcceptedAndStored(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)
	cases := []struct{ name, selector, sa string }{
		{"sa-only", "", "app"},
		{"sa-and-selector", "sel", "app.v2"},
		{"selector-only", "sel", ""},
	}
	for _, c := range cases {
		b := testenv.NewBinding(ns, c.name, "id1", c.selector)
		b.Spec.ServiceAccountName = c.sa
		b.Spec.Weight = 7
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatalf("%s: the apiserver refused a valid binding: %v", c.name, err)
		}
		var got aadv1.AzureIdentityBinding
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(b), &got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.ServiceAccountName != c.sa || got.Spec.Selector != c.selector || got.Spec.Weight != 7 {
			t.Errorf("%s: stored spec = %+v, want selector %q, serviceAccountName %q, weight 7", c.name, got.Spec, c.selector, c.sa)
		}
	}
	// The schema is structural: the field is not pruned (an unstructured read sees it).
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(aadv1.SchemeGroupVersion.String())
	u.SetKind("AzureIdentityBinding")
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "sa-only"}, u); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := unstructured.NestedString(u.Object, "spec", "serviceAccountName"); v != "app" {
		t.Errorf("spec.serviceAccountName read as %q, want app", v)
	}
}
