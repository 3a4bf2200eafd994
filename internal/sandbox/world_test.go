package sandbox

import (
	"strings"
	"testing"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// The default world holds the federated demo's identity, and its credential names the issuer,
// the demo ServiceAccount and Azure AD's default audience, as az identity federated-credential
// create would write it.
func TestWorldHasTheFederatedDemo(t *testing.T) {
	cfg, err := World(TimingFast)
	if err != nil {
		t.Fatal(err)
	}
	const issuer = "https://127.0.0.1:6443"
	if err := addFederatedDemo(&cfg, issuer); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, id := range cfg.UserAssignedIdentities {
		if id.Name != FederatedIdentity {
			if len(id.FederatedCredentials) != 0 {
				t.Errorf("identity %s has federated credentials %+v; only %s should", id.Name, id.FederatedCredentials, FederatedIdentity)
			}
			continue
		}
		found = true
		if len(id.FederatedCredentials) != 1 {
			t.Fatalf("%s has %d federated credentials, want 1", id.Name, len(id.FederatedCredentials))
		}
		c := id.FederatedCredentials[0]
		if c.Issuer != issuer || c.Subject != "system:serviceaccount:default:federated-demo" ||
			len(c.Audiences) != 1 || c.Audiences[0] != aadv1.DefaultFederationAudience {
			t.Errorf("federated demo credential %+v", c)
		}
	}
	if !found {
		t.Fatalf("the default world has no identity %s", FederatedIdentity)
	}

	cfg.UserAssignedIdentities = nil
	if err := addFederatedDemo(&cfg, issuer); err == nil || !strings.Contains(err.Error(), FederatedIdentity) {
		t.Errorf("a world without %s: got %v, want an error naming it", FederatedIdentity, err)
	}
}
