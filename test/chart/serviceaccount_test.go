package chart_test

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/chartrender"
)

// requireServiceAccountBindings reaches MIC and NMI as --require-service-account-bindings, and
// only when set.
func TestRequireServiceAccountBindingsReachesMICAndNMI(t *testing.T) {
	const flag = "--require-service-account-bindings=true"
	for _, v := range []any{true, "true"} {
		objs := render(t, "podidentity", "podidentity", map[string]any{"requireServiceAccountBindings": v})
		wantArgs(t, "MIC", args(t, objs, "Deployment"), flag)
		wantArgs(t, "NMI", args(t, objs, "DaemonSet"), flag)
	}
	objs := render(t, "podidentity", "podidentity", map[string]any{})
	noArgPrefix(t, "MIC", args(t, objs, "Deployment"), "--require-service-account-bindings")
	noArgPrefix(t, "NMI", args(t, objs, "DaemonSet"), "--require-service-account-bindings")
}

// azureIdentities.<name>.binding may name a ServiceAccount instead of, or besides, a selector;
// one of them is required.
func TestChartBindingsWithServiceAccounts(t *testing.T) {
	binding := func(b map[string]any) map[string]any {
		return map[string]any{"azureIdentities": map[string]any{"app": map[string]any{
			"resourceID": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app",
			"clientID":   "6c3c3f6e-7e0a-4f5b-9d3a-0a1b2c3d4e60", "binding": b}}}
	}
	spec := func(vals map[string]any) aadv1.AzureIdentityBindingSpec {
		t.Helper()
		return decode[aadv1.AzureIdentityBinding](t, find(render(t, "r", "n", vals), "AzureIdentityBinding", "app-binding")).Spec
	}
	if s := spec(binding(map[string]any{"serviceAccountName": "app"})); s.ServiceAccountName != "app" || s.Selector != "" {
		t.Errorf("ServiceAccount-only binding rendered as %+v", s)
	}
	if s := spec(binding(map[string]any{"serviceAccountName": "app", "selector": "app"})); s.ServiceAccountName != "app" || s.Selector != "app" {
		t.Errorf("ServiceAccount and selector binding rendered as %+v", s)
	}
	if s := spec(binding(map[string]any{"selector": "app"})); s.ServiceAccountName != "" || s.Selector != "app" {
		t.Errorf("selector binding rendered as %+v", s)
	}
	ch, err := loadOnce()
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal([]byte("azureIdentities:\n  app:\n    clientID: 6c3c3f6e-7e0a-4f5b-9d3a-0a1b2c3d4e60\n    binding:\n      name: b\n"), &vals); err != nil {
		t.Fatal(err)
	}
	_, err = chartrender.Render(ch, chartrender.Options{ReleaseName: "r", Namespace: "n", Values: vals})
	if err == nil || !strings.Contains(err.Error(), "serviceAccountName") || !strings.Contains(err.Error(), "selector") {
		t.Fatalf("a binding with neither selector nor serviceAccountName: got %v, want an error naming both", err)
	}
}
