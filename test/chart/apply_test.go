package chart_test

import (
	"context"
	"sync"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/testenv"
)

// applier server-side applies objects and fails the test on any apiserver warning (unknown or
// duplicate fields, deprecated APIs): Kubernetes accepts those but they mean the chart is wrong.
type applier struct {
	c        client.Client
	mu       sync.Mutex
	warnings []string
}

func (a *applier) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.warnings = append(a.warnings, text)
}

func newApplier(t *testing.T) *applier {
	a := &applier{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WarningHandlerWithContext = a
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	a.c = c
	return a
}

func (a *applier) apply(t *testing.T, o chartrender.Object, dryRun bool) {
	t.Helper()
	js, err := yaml.YAMLToJSONStrict([]byte(o.YAML))
	if err != nil {
		t.Fatalf("%s %s (%s): %v", o.Kind, o.Name, o.Source, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		t.Fatalf("%s %s: %v", o.Kind, o.Name, err)
	}
	opts := []client.ApplyOption{client.FieldOwner("podidentity-chart-test"), client.ForceOwnership}
	if dryRun {
		opts = append(opts, client.DryRunAll)
	}
	if err := a.c.Apply(testenv.Context(t), client.ApplyConfigurationFromUnstructured(u), opts...); err != nil {
		t.Errorf("server-side apply of %s %s/%s (from %s): %v", o.Kind, o.Namespace, o.Name, o.Source, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.warnings {
		t.Errorf("apiserver warning for %s %s/%s (from %s): %s", o.Kind, o.Namespace, o.Name, o.Source, w)
	}
	a.warnings = nil
}

var serviceMonitorCRD = sync.OnceValue(func() error {
	// The Prometheus Operator's CRD is not part of this project; a schemaless stand-in is enough to
	// check the object is well-formed at the Kubernetes level and that its kind and group exist.
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "servicemonitors.monitoring.coreos.com"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "monitoring.coreos.com", Scope: apiextensionsv1.NamespaceScoped,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "servicemonitors", Singular: "servicemonitor", Kind: "ServiceMonitor", ListKind: "ServiceMonitorList"},
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object", XPreserveUnknownFields: ptr(true)}}}},
		},
	}
	c, err := client.New(env.Config, client.Options{Scheme: scheme()})
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := c.Create(ctx, crd); err != nil {
		return err
	}
	// Wait until the apiserver serves the new kind (a state, not a time).
	for {
		if err := c.Get(ctx, client.ObjectKeyFromObject(crd), crd); err != nil {
			return err
		}
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return nil
			}
		}
	}
})

func TestApplyToAPIServer(t *testing.T) {
	if err := serviceMonitorCRD(); err != nil {
		t.Fatalf("installing the ServiceMonitor stand-in CRD: %v", err)
	}
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			ns := env.Namespace(t)
			vals := readValues(t, s.file)
			if s.name == "namespaced" {
				vals["rbac"].(map[string]any)["secretNamespaces"] = []any{env.Namespace(t)}
			}
			a := newApplier(t)
			objs := render(t, ns, ns, vals)
			ch, _ := loadOnce()
			crds, err := chartrender.Render(ch, chartrender.Options{ReleaseName: ns, Namespace: ns, Values: vals, IncludeCRDs: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(crds) != len(objs)+4 {
				t.Errorf("IncludeCRDs added %d objects, want the 4 CRDs", len(crds)-len(objs))
			}
			for _, o := range crds {
				a.apply(t, o, true)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func scheme() *k8sruntime.Scheme {
	s := testenv.NewScheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
