package desired

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
)

func federated(id *aadv1.AzureIdentity) *aadv1.AzureIdentity {
	id.Spec.Federation = &aadv1.Federation{}
	return id
}

// A federated identity's tokens come from Azure AD through NMI: no VM/VMSS needs it, so its
// pairs are AAIs (unless skipped) and never ARM needs; a standard identity next to it still is.
func TestFederatedIdentitiesNeedNoAssignment(t *testing.T) {
	pods := []Pod{{Namespace: "a", Name: "p1", Selector: "fed", NodeName: "n1"}, {Namespace: "a", Name: "p2", Selector: "std", NodeName: "n1"},
		{Namespace: "a", Name: "p3", Selector: "fed-sp", NodeName: "n3"}}
	fedSP := federated(sp("a", "fedsp"))
	fedSP.Spec.TenantID = "t"
	for _, tc := range []struct {
		name     string
		skip     bool
		wantAAIs []string
		wantIDs  map[string][]string // group → identity names it needs
	}{
		{"federated pairs are AAIs without ARM needs", false, []string{"p1-a-fed", "p2-a-std", "p3-a-fedsp"},
			map[string][]string{"pool": {"a-std"}, "n3": {}}},
		{"--skip-federated-assignments", true, []string{"p2-a-std"}, map[string][]string{"pool": {"a-std"}}},
	} {
		st := Compute(Input{Pods: pods, Nodes: nodes(), Options: Options{SkipFederated: tc.skip},
			Identities: []*aadv1.AzureIdentity{federated(msi("a", "fed")), msi("a", "std"), fedSP},
			Bindings:   []*aadv1.AzureIdentityBinding{bnd("a", "b1", "fed", "fed"), bnd("a", "b2", "std", "std"), bnd("a", "b3", "fedsp", "fed-sp")}})
		var aais []string
		for k := range st.AAIs {
			aais = append(aais, k.Name)
		}
		sort.Strings(aais)
		if fmt.Sprint(aais) != fmt.Sprint(tc.wantAAIs) {
			t.Errorf("%s: AAIs %v, want %v", tc.name, aais, tc.wantAAIs)
		}
		got := map[string][]string{}
		for _, g := range st.Groups {
			names := []string{}
			for id := range g.Identities {
				names = append(names, id[strings.LastIndex(id, "/")+1:])
			}
			sort.Strings(names)
			got[g.Resource.Name] = names
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.wantIDs) {
			t.Errorf("%s: ARM needs %v, want %v", tc.name, got, tc.wantIDs)
		}
		for _, a := range st.AAIs {
			if a.Identity.Spec.IsFederated() && (a.NeedsAzure() || a.IdentityID() != "") {
				t.Errorf("%s: %s needs Azure", tc.name, a.Key)
			}
		}
	}
}

// An existing AAI of a federated identity names no identity to keep on the VM/VMSS, and is not
// evidence of an earlier MIC's assignment.
func TestFederatedAAIsNameNoIdentityToKeepOrAdopt(t *testing.T) {
	h := &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "x"},
		Spec:   aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: federated(msi("a", "fed"))},
		Status: aadv1.AzureAssignedIdentityStatus{Status: aadv1.AssignedIDAssigned}}
	if id := IdentityIDOf(h); id != "" {
		t.Errorf("IdentityIDOf = %q, want none", id)
	}
	if got := Inherited([]*aadv1.AzureAssignedIdentity{h}, nil); len(got) != 0 {
		t.Errorf("Inherited = %v, want none", got)
	}
}

// Switching an identity to federated leaves it out of Desired: PlanIdentities removes it only
// when MIC put it there.
func TestIdentitySwitchedToFederatedIsRemovedOnlyWhenMICOwnsIt(t *testing.T) {
	id := strings.ToLower(resID("a-fed"))
	cur := map[string]string{id: "c"}
	for _, tc := range []struct {
		name   string
		owned  map[string]string
		remove bool
	}{
		{"owned by MIC", map[string]string{id: "c"}, true},
		{"assigned by someone else", nil, false},
	} {
		in := PlanInput{Desired: map[string]string{}, Owned: tc.owned, Current: cloud.Identities{UserAssigned: cur}}
		p := PlanIdentities(in)
		if (len(p.Remove) == 1) != tc.remove || NeedsChange(in) != tc.remove {
			t.Errorf("%s: plan %+v (NeedsChange %v), want remove=%v", tc.name, p, NeedsChange(in), tc.remove)
		}
	}
}
