package v1_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/testenv"
)

const (
	fedClientID = "11111111-2222-3333-4444-555555555555"
	fedTenantID = "66666666-7777-8888-9999-000000000000"
	fedResource = "/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fed"
)

func federated(ns, name string, t aadv1.IdentityType, f *aadv1.Federation) *aadv1.AzureIdentity {
	id := &aadv1.AzureIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       aadv1.AzureIdentitySpec{Type: t, ClientID: fedClientID, TenantID: fedTenantID, Federation: f},
	}
	if t == aadv1.UserAssignedMSI {
		id.Spec.ResourceID = fedResource
	}
	return id
}

// A federated user-assigned identity and a federated app registration (type 1, no Secret) are
// accepted; an empty federation object gets the documented defaults.
func TestFederatedIdentitiesAreAcceptedWithDefaults(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)
	for _, id := range []*aadv1.AzureIdentity{
		federated(ns, "uami", aadv1.UserAssignedMSI, &aadv1.Federation{}),
		federated(ns, "app", aadv1.ServicePrincipal, &aadv1.Federation{}),
	} {
		if err := env.Client.Create(ctx, id); err != nil {
			t.Fatalf("%s: the apiserver refused a valid federated identity: %v", id.Name, err)
		}
		var got aadv1.AzureIdentity
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(id), &got); err != nil {
			t.Fatal(err)
		}
		f := got.Spec.Federation
		if f == nil || f.Audience != aadv1.DefaultFederationAudience || f.Subject != aadv1.FederationSubjectServiceAccount {
			t.Errorf("%s: stored federation = %+v, want audience %q and subject %q", id.Name, f, aadv1.DefaultFederationAudience, aadv1.FederationSubjectServiceAccount)
		}
		if !got.Spec.IsFederated() || f.ExpirationSecondsOrDefault() != 3600 || f.IsBroker() {
			t.Errorf("%s: helpers read %+v wrongly", id.Name, f)
		}
	}
	// An identity without the field is not federated and reads back without it.
	plain := federated(ns, "plain", aadv1.UserAssignedMSI, nil)
	if err := env.Client.Create(ctx, plain); err != nil {
		t.Fatal(err)
	}
	var got aadv1.AzureIdentity
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(plain), &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.IsFederated() {
		t.Errorf("an identity without spec.federation reads back federated: %+v", got.Spec.Federation)
	}
}

// Federated identities that cannot work are refused at apply time, naming the field.
func TestInvalidFederatedIdentitiesAreRefused(t *testing.T) {
	ns := env.Namespace(t)
	short, long := int64(60), int64(90000)
	cases := []struct {
		name string
		mut  func(*aadv1.AzureIdentity)
		want []string
	}{
		{"without tenantID", func(id *aadv1.AzureIdentity) { id.Spec.TenantID = "" },
			[]string{"spec.tenantID is required for a federated identity"}},
		{"with a Secret", func(id *aadv1.AzureIdentity) {
			id.Spec.Type = aadv1.ServicePrincipal
			id.Spec.ClientPassword = corev1.SecretReference{Name: "s"}
		}, []string{"spec.clientPassword and spec.federation exclude each other"}},
		{"of a certificate principal", func(id *aadv1.AzureIdentity) {
			id.Spec.Type = aadv1.ServicePrincipalCertificate
			id.Spec.ClientPassword = corev1.SecretReference{Name: "s"}
		}, []string{"spec.federation is not supported for a service principal with a certificate"}},
		{"with auxiliary tenants", func(id *aadv1.AzureIdentity) {
			id.Spec.Type = aadv1.ServicePrincipal
			id.Spec.AuxiliaryTenantIDs = []string{fedTenantID}
		}, []string{"spec.auxiliaryTenantIDs is not supported with spec.federation"}},
		{"token lifetime too short", func(id *aadv1.AzureIdentity) { id.Spec.Federation.TokenExpirationSeconds = &short },
			[]string{"tokenExpirationSeconds", "600"}},
		{"token lifetime too long", func(id *aadv1.AzureIdentity) { id.Spec.Federation.TokenExpirationSeconds = &long },
			[]string{"tokenExpirationSeconds", "86400"}},
		{"unknown subject", func(id *aadv1.AzureIdentity) { id.Spec.Federation.Subject = "Node" },
			[]string{"subject", "ServiceAccount", "Broker"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := federated(ns, "bad", aadv1.UserAssignedMSI, &aadv1.Federation{})
			c.mut(id)
			err := env.Client.Create(testenv.Context(t), id)
			if err == nil {
				_ = env.Client.Delete(testenv.Context(t), id)
				t.Fatalf("the apiserver accepted %+v; want it refused", id.Spec)
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
