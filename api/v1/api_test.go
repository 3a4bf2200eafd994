package v1_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/testenv"
)

const (
	sub      = "11111111-2222-3333-4444-555555555555"
	clientID = "6c3c3f6e-7e0a-4f5b-9d3a-0a1b2c3d4e5f"
	tenantID = "72f988bf-0000-4000-8000-000000000001"
)

func TestEveryKindCanBeCreatedReadListedAndWatched(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	identity := testenv.NewMSIIdentity(ns, "id1", sub, "rg", clientID)
	binding := testenv.NewBinding(ns, "b1", "id1", "sel")
	assigned := &aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:  ns,
			Name:       "pod1-" + ns + "-id1",
			Labels:     map[string]string{aadv1.AssignedIdentityNodeLabel: "node1"},
			Finalizers: []string{aadv1.AssignedIdentityFinalizer},
		},
		Spec: aadv1.AzureAssignedIdentitySpec{
			AzureIdentityRef: embedIdentity(identity),
			AzureBindingRef:  embedBinding(binding),
			Pod:              "pod1", PodNamespace: ns, NodeName: "node1",
		},
		Status: aadv1.AzureAssignedIdentityStatus{Status: aadv1.AssignedIDCreated, AvailableReplicas: 1},
	}
	exception := &aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ex1"},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "custom"}},
	}

	cases := []struct {
		obj  client.Object
		list client.ObjectList
		get  client.Object
	}{
		{identity, &aadv1.AzureIdentityList{}, &aadv1.AzureIdentity{}},
		{binding, &aadv1.AzureIdentityBindingList{}, &aadv1.AzureIdentityBinding{}},
		{assigned, &aadv1.AzureAssignedIdentityList{}, &aadv1.AzureAssignedIdentity{}},
		{exception, &aadv1.AzurePodIdentityExceptionList{}, &aadv1.AzurePodIdentityException{}},
	}
	for _, c := range cases {
		w, err := wc.Watch(ctx, c.list, client.InNamespace(ns))
		if err != nil {
			t.Fatalf("watching %T: %v", c.list, err)
		}
		env.Create(t, c.obj)
		select {
		case ev := <-w.ResultChan():
			if ev.Type != watch.Added {
				t.Errorf("watch of %T: got %s event, want ADDED", c.list, ev.Type)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("watch of %T: no event within 30s of creating %s", c.list, c.obj.GetName())
		}
		w.Stop()
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(c.obj), c.get); err != nil {
			t.Fatalf("getting %T: %v", c.get, err)
		}
		if err := env.Client.List(ctx, c.list, client.InNamespace(ns)); err != nil {
			t.Fatalf("listing %T: %v", c.list, err)
		}
		if n := len(mustItems(t, c.list)); n != 1 {
			t.Errorf("listing %T: %d items, want 1", c.list, n)
		}
	}

	// The AAI comes back with what MIC relies on: state, node label, finalizer, embedded copies.
	got := &aadv1.AzureAssignedIdentity{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(assigned), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Status != aadv1.AssignedIDCreated || got.Labels[aadv1.AssignedIdentityNodeLabel] != "node1" ||
		len(got.Finalizers) != 1 || got.Spec.AzureIdentityRef == nil ||
		got.Spec.AzureIdentityRef.Spec.ResourceID != identity.Spec.ResourceID ||
		got.Spec.AzureBindingRef.Spec.Selector != "sel" || got.Spec.NodeName != "node1" {
		t.Errorf("AzureAssignedIdentity did not round-trip: %+v", got)
	}
	// No status subresource (as upstream): status is written with the object itself.
	got.Status.Status = aadv1.AssignedIDAssigned
	if err := env.Client.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(assigned), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Status != aadv1.AssignedIDAssigned {
		t.Errorf("status written through the main resource was dropped: %q", got.Status.Status)
	}
}

func mustItems(t *testing.T, l client.ObjectList) []any {
	t.Helper()
	switch l := l.(type) {
	case *aadv1.AzureIdentityList:
		return anySlice(l.Items)
	case *aadv1.AzureIdentityBindingList:
		return anySlice(l.Items)
	case *aadv1.AzureAssignedIdentityList:
		return anySlice(l.Items)
	case *aadv1.AzurePodIdentityExceptionList:
		return anySlice(l.Items)
	}
	t.Fatalf("unknown list %T", l)
	return nil
}

func anySlice[T any](s []T) []any {
	out := make([]any, len(s))
	for i := range s {
		out[i] = s[i]
	}
	return out
}

func embedIdentity(id *aadv1.AzureIdentity) *aadv1.AzureIdentity {
	c := id.DeepCopy()
	c.APIVersion, c.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentity"
	return c
}

func embedBinding(b *aadv1.AzureIdentityBinding) *aadv1.AzureIdentityBinding {
	c := b.DeepCopy()
	c.APIVersion, c.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentityBinding"
	return c
}

// The YAML shapes of upstream's samples and Best Practices page stay valid.
func TestUpstreamSampleManifestsApply(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "examples", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found in examples/crds: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			ns := env.Namespace(t)
			objs := readManifests(t, f)
			if len(objs) == 0 {
				t.Fatalf("%s holds no objects", f)
			}
			for _, o := range objs {
				o.SetNamespace(ns)
				err := env.Client.Apply(testenv.Context(t), client.ApplyConfigurationFromUnstructured(o),
					client.FieldOwner("podidentity-test"), client.ForceOwnership)
				if err != nil {
					t.Errorf("applying %s %s from %s: %v", o.GetKind(), o.GetName(), filepath.Base(f), err)
				}
			}
		})
	}
}

func readManifests(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("decoding %s: %v", path, err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

func TestResourceIDIsMatchedCaseInsensitivelyAsARMDoes(t *testing.T) {
	ns := env.Namespace(t)
	for i, rid := range []string{
		"/subscriptions/" + sub + "/resourceGroups/My-RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a",
		"/subscriptions/" + sub + "/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/b",
		"/SUBSCRIPTIONS/" + sub + "/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.MANAGEDIDENTITY/USERASSIGNEDIDENTITIES/C",
	} {
		id := testenv.NewMSIIdentity(ns, "id"+string(rune('a'+i)), sub, "rg", clientID)
		id.Spec.ResourceID = rid
		if err := env.Client.Create(testenv.Context(t), id); err != nil {
			t.Errorf("resourceID %q was refused: %v", rid, err)
		}
	}
}

func TestInvalidObjectsAreRefusedWithMessagesThatSayWhatToFix(t *testing.T) {
	ns := env.Namespace(t)
	msi := func(mut func(*aadv1.AzureIdentitySpec)) client.Object {
		id := testenv.NewMSIIdentity(ns, "bad", sub, "rg", clientID)
		mut(&id.Spec)
		return id
	}
	sp := func(mut func(*aadv1.AzureIdentitySpec)) client.Object {
		id := &aadv1.AzureIdentity{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad"},
			Spec: aadv1.AzureIdentitySpec{
				Type: aadv1.ServicePrincipal, ClientID: clientID, TenantID: tenantID,
				ClientPassword: corev1.SecretReference{Name: "sp-secret", Namespace: ns},
			},
		}
		mut(&id.Spec)
		return id
	}
	binding := func(identity, selector string) client.Object {
		return testenv.NewBinding(ns, "bad", identity, selector)
	}
	saBinding := func(identity, selector, sa string) client.Object {
		b := testenv.NewBinding(ns, "bad", identity, selector)
		b.Spec.ServiceAccountName = sa
		return b
	}
	cases := []struct {
		name string
		obj  client.Object
		want []string
	}{
		{"resourceID missing the provider segment", msi(func(s *aadv1.AzureIdentitySpec) {
			s.ResourceID = "/subscriptions/" + sub + "/resourcegroups/rg/userAssignedIdentities/x"
		}), []string{"spec.resourceID", "/subscriptions/<subscription-id>/resourcegroups/<resource-group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<identity-name>"}},
		{"resourceID of another resource type", msi(func(s *aadv1.AzureIdentitySpec) {
			s.ResourceID = "/subscriptions/" + sub + "/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/x"
		}), []string{"spec.resourceID", "userAssignedIdentities"}},
		{"resourceID missing for a managed identity", msi(func(s *aadv1.AzureIdentitySpec) { s.ResourceID = "" }),
			[]string{"spec.resourceID is required for a user-assigned managed identity (type 0)"}},
		{"clientID missing", msi(func(s *aadv1.AzureIdentitySpec) { s.ClientID = "" }),
			[]string{"spec.clientID is required", "GUID"}},
		{"clientID not a GUID", msi(func(s *aadv1.AzureIdentitySpec) { s.ClientID = "<clientId>" }),
			[]string{"spec.clientID", "GUID"}},
		{"unknown identity type", msi(func(s *aadv1.AzureIdentitySpec) { s.Type = 3 }),
			[]string{"spec.type", "supported values", "0", "1", "2"}},
		{"service principal without tenantID", sp(func(s *aadv1.AzureIdentitySpec) { s.TenantID = "" }),
			[]string{"spec.tenantID is required for a service principal"}},
		{"service principal without its Secret", sp(func(s *aadv1.AzureIdentitySpec) { s.ClientPassword = corev1.SecretReference{} }),
			[]string{"spec.clientPassword.name is required", "Secret"}},
		{"certificate principal without its Secret", sp(func(s *aadv1.AzureIdentitySpec) {
			s.Type = aadv1.ServicePrincipalCertificate
			s.ClientPassword = corev1.SecretReference{}
		}), []string{"spec.clientPassword.name is required"}},
		{"auxiliary tenants on a managed identity", msi(func(s *aadv1.AzureIdentitySpec) { s.AuxiliaryTenantIDs = []string{tenantID} }),
			[]string{"spec.auxiliaryTenantIDs is only supported for a service principal with a client secret"}},
		{"binding without selector", binding("id", ""), []string{"spec.selector is required unless spec.serviceAccountName is set", "aadpodidbinding"}},
		{"binding with neither selector nor ServiceAccount", saBinding("id", "", ""), []string{"spec.selector is required unless spec.serviceAccountName is set", "set spec.serviceAccountName"}},
		{"binding naming an invalid ServiceAccount", saBinding("id", "", "My_SA"), []string{"spec.serviceAccountName", "name of a ServiceAccount"}},
		{"ServiceAccount binding with a selector no label can carry", saBinding("id", "not a label value!", "app"), []string{"spec.selector", "valid label value"}},
		{"binding with a selector no label can carry", binding("id", "not a label value!"), []string{"spec.selector", "valid label value"}},
		{"binding without identity", binding("", "sel"), []string{"spec.azureIdentity is required"}},
		{"binding naming an invalid object name", binding("My_Identity", "sel"), []string{"spec.azureIdentity", "name of an AzureIdentity"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := env.Client.Create(testenv.Context(t), c.obj)
			if err == nil {
				_ = env.Client.Delete(testenv.Context(t), c.obj)
				t.Fatalf("the apiserver accepted the object; want it refused")
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("got %v, want an Invalid error", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err.Error(), w)
				}
			}
		})
	}
}

// kubectl get shows the upstream printer columns.
func TestPrinterColumnsMatchUpstream(t *testing.T) {
	ns := env.Namespace(t)
	env.Create(t, testenv.NewMSIIdentity(ns, "id1", sub, "rg", clientID))
	env.Create(t, testenv.NewBinding(ns, "b1", "id1", "sel"))
	want := map[string][]string{
		"azureidentities":            {"Name", "Type", "ClientID", "Age"},
		"azureidentitybindings":      {"Name", "AzureIdentity", "Selector", "ServiceAccount", "Age"},
		"azureassignedidentities":    {"Name", "Pod", "PodNamespace", "Node", "Identity", "Status", "Age"},
		"azurepodidentityexceptions": {"Name", "Age"},
	}
	for resource, cols := range want {
		table := &metav1.Table{}
		err := restClient(t).Get().AbsPath("/apis/aadpodidentity.k8s.io/v1/namespaces", ns, resource).
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(testenv.Context(t)).Into(table)
		if err != nil {
			t.Fatalf("getting %s as a table: %v", resource, err)
		}
		var got []string
		for _, c := range table.ColumnDefinitions {
			got = append(got, c.Name)
		}
		if strings.Join(got, ",") != strings.Join(cols, ",") {
			t.Errorf("%s columns = %v, want %v", resource, got, cols)
		}
	}
}
