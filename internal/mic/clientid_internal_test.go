package mic

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

const (
	carrierID     = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/carrier"
	carrierClient = "0c000000-0000-4000-8000-000000000001"
	victimClient  = "0c000000-0000-4000-8000-000000000002"
)

func msiAAI(typ aadv1.IdentityType, resourceID, clientID string) *desired.AAI {
	return &desired.AAI{Identity: &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "evil", Name: "stolen"},
		Spec: aadv1.AzureIdentitySpec{Type: typ, ResourceID: resourceID, ClientID: clientID}}}
}

func TestCheckClientIDComparesSpecWithWhatARMReports(t *testing.T) {
	res := cloud.Resource{Kind: cloud.KindVMSS, SubscriptionID: "s", ResourceGroup: "rg", Name: "pool"}
	known := func(client string) cloud.Identities {
		return cloud.Identities{UserAssigned: map[string]string{strings.ToLower(carrierID): client}}
	}
	for _, tc := range []struct {
		name     string
		a        *desired.AAI
		known    cloud.Identities
		ok       bool
		mismatch bool
	}{
		{"equal", msiAAI(aadv1.UserAssignedMSI, carrierID, carrierClient), known(carrierClient), true, false},
		{"equal in another case", msiAAI(aadv1.UserAssignedMSI, strings.ToUpper(carrierID), strings.ToUpper(carrierClient)), known(carrierClient), true, false},
		{"another identity's client ID", msiAAI(aadv1.UserAssignedMSI, carrierID, victimClient), known(carrierClient), false, true},
		{"ARM reports none", msiAAI(aadv1.UserAssignedMSI, carrierID, carrierClient), known(""), false, false},
		{"not on the VM/VMSS yet", msiAAI(aadv1.UserAssignedMSI, carrierID, victimClient), cloud.Identities{}, true, false},
		{"service principal", msiAAI(aadv1.ServicePrincipal, "", victimClient), known(carrierClient), true, false},
	} {
		ce := checkClientID(tc.a, res, tc.known)
		if (ce == nil) != tc.ok || (ce != nil && ce.Mismatch() != tc.mismatch) {
			t.Errorf("%s: got %v, want ok=%v mismatch=%v", tc.name, ce, tc.ok, tc.mismatch)
		}
	}
	ce := checkClientID(msiAAI(aadv1.UserAssignedMSI, carrierID, victimClient), res, known(carrierClient))
	want := "AzureIdentity evil/stolen has clientID " + victimClient + " but ARM reports client ID " + carrierClient +
		" for resourceID " + carrierID + " on " + res.String() + ": set spec.clientID to " + carrierClient
	if ce.Error() != want {
		t.Errorf("message\n got %s\nwant %s", ce.Error(), want)
	}
}

func TestTakeReportedFillsClientIDsFromThePatchResponse(t *testing.T) {
	a, b := "/x/a", "/x/b"
	next := cloud.Identities{UserAssigned: map[string]string{a: "", b: "old"}}
	if missing := takeReported(next, cloud.Identities{UserAssigned: map[string]string{a: "ca", b: "cb", "/x/other": "co"}}, []string{a}); missing {
		t.Error("reported every added client ID, but missing = true")
	}
	if next.UserAssigned[a] != "ca" || next.UserAssigned[b] != "cb" || len(next.UserAssigned) != 2 {
		t.Errorf("next = %v, want a=ca, b=cb and nothing else", next.UserAssigned)
	}
	next = cloud.Identities{UserAssigned: map[string]string{a: "", b: "cb"}}
	if missing := takeReported(next, cloud.Identities{}, []string{a}); !missing || next.UserAssigned[b] != "cb" {
		t.Errorf("a response without identities: missing=%v next=%v, want missing and b kept", missing, next.UserAssigned)
	}
}
