package emulator

import (
	"net/http"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// go-autorest/adal clients in a custom cloud ask for a token whose resource is the environment's
// resourceManagerEndpoint (or its tokenAudience); ARM accepts those as Azure Stack Hub does.
func TestARMAcceptsItsOwnEndpointAndConfiguredAudiences(t *testing.T) {
	const custom = "https://management.emulator.invalid/"
	e := newWorld(t, func(c *Config) { c.ARMAudiences = []string{custom} })
	cred := secretCred(t, e, testApp, testSecret)
	get := func(resource string) int {
		tok, err := cred.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{resource + "/.default"}})
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodGet, e.ARMURL()+"/subscriptions/"+e.Config().SubscriptionID+
			"/resourceGroups/"+e.Config().ResourceGroup+"/providers/Microsoft.Compute/virtualMachines/vm-0?api-version=2024-07-01", nil)
		req.Header.Set("Authorization", "Bearer "+tok.Token)
		resp, err := e.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for _, aud := range []string{e.ARMURL(), e.ARMURL() + "/", custom, "https://management.azure.com/"} {
		if st := get(aud); st != 200 {
			t.Errorf("token for %s: ARM answered %d, want 200", aud, st)
		}
	}
	if st := get("https://vault.azure.net"); st != 401 {
		t.Errorf("token for another resource: ARM answered %d, want 401", st)
	}
}
