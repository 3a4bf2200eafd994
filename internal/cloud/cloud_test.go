package cloud

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestResourceForNode(t *testing.T) {
	d := Defaults{SubscriptionID: "sub", ResourceGroup: "rg"}
	cases := []struct {
		name, node, pid string
		want            Resource
		fromPID         bool
		err             bool
	}{
		{"vmss instance", "n", "azure:///subscriptions/s1/resourceGroups/RG1/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3",
			Resource{KindVMSS, "s1", "RG1", "pool"}, true, false},
		{"vm in another resource group", "n", "azure:///subscriptions/s2/resourceGroups/other/providers/Microsoft.Compute/virtualMachines/vm-7",
			Resource{KindVM, "s2", "other", "vm-7"}, true, false},
		{"lower-case provider id", "n", "azure:///subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/p/virtualmachines/0",
			Resource{KindVMSS, "s", "rg", "p"}, true, false},
		{"no provider id → VM named after node", "node-1", "", Resource{KindVM, "sub", "rg", "node-1"}, false, false},
		{"foreign provider id", "n", "aws:///us-east-1a/i-123", Resource{}, true, true},
	}
	for _, tc := range cases {
		got, from, err := ResourceForNode(tc.node, tc.pid, d)
		if (err != nil) != tc.err || got != tc.want || from != tc.fromPID {
			t.Errorf("%s: got %+v %v %v, want %+v %v err=%v", tc.name, got, from, err, tc.want, tc.fromPID, tc.err)
		}
		if tc.err && !errors.Is(err, ErrBadProviderID) {
			t.Errorf("%s: error %v is not ErrBadProviderID", tc.name, err)
		}
	}
	if _, _, err := ResourceForNode("n", "", Defaults{}); !errors.Is(err, ErrBadProviderID) {
		t.Errorf("no providerID and no defaults: err = %v, want ErrBadProviderID", err)
	}
}

func TestIdentitiesInMessage(t *testing.T) {
	msg := `The client 'x' with object id 'y' has permission to perform action 'Microsoft.Compute/virtualMachineScaleSets/write' on scope '/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool'; however, it does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/bad1,/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/Bad2' or the linked scope(s) are invalid.`
	want := []string{
		"/subscriptions/s/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/bad1",
		"/subscriptions/s/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/bad2",
	}
	if got := IdentitiesInMessage(msg); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestErrorIs(t *testing.T) {
	e := &Error{StatusCode: 403, Code: "LinkedAuthorizationFailed", Identities: []string{"x"}}
	if !errors.Is(e, ErrIdentity) || errors.Is(e, ErrThrottled) {
		t.Fatal("LinkedAuthorizationFailed with identities must be ErrIdentity and not ErrThrottled")
	}
	if !errors.Is(&Error{StatusCode: 429}, ErrThrottled) || !errors.Is(&Error{StatusCode: 404}, ErrNotFound) {
		t.Fatal("429 must be ErrThrottled and 404 ErrNotFound")
	}
}

// The key's string form must equal the lower-cased ARM ID: MIC's ownership ConfigMap names are
// a hash of it, and changing it would orphan every record written before.
func TestResourceKeyIsCaseInsensitiveAndStable(t *testing.T) {
	a := Resource{KindVMSS, "S1", "RG1", "Pool"}
	b := Resource{KindVMSS, "s1", "rg1", "pool"}
	if a.Key() != b.Key() {
		t.Errorf("keys of %v and %v differ", a, b)
	}
	if got, want := a.Key().String(), strings.ToLower(a.ID()); got != want {
		t.Errorf("Key().String() = %q, want %q", got, want)
	}
	if !(Resource{}).Key().IsZero() || a.Key().IsZero() {
		t.Error("IsZero wrong")
	}
}
