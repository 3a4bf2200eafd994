package emulator

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
)

func ficClient(t *testing.T, e *Emulator) *armmsi.FederatedIdentityCredentialsClient {
	t.Helper()
	cred, err := e.PrincipalCredential(testApp)
	if err != nil {
		t.Fatal(err)
	}
	o := e.ARMClientOptions()
	o.Retry = policy.RetryOptions{MaxRetries: -1} // observe 409 and 429 as they are
	c, err := armmsi.NewFederatedIdentityCredentialsClient(e.Config().SubscriptionID, cred, (*arm.ClientOptions)(o))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ficParams(issuer, subject string, audiences ...string) armmsi.FederatedIdentityCredential {
	return armmsi.FederatedIdentityCredential{Properties: &armmsi.FederatedIdentityCredentialProperties{
		Issuer: to(issuer), Subject: to(subject), Audiences: ptrs(audiences)}}
}

func armStatus(t *testing.T, err error) (int, string, string) {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("want an ARM ResponseError, got %v", err)
	}
	return re.StatusCode, re.ErrorCode, re.Error()
}

func TestFederatedCredentialsThroughARM(t *testing.T) {
	e := newWorld(t, nil)
	c := ficClient(t, e)
	rg := e.Config().ResourceGroup
	const iss = "https://oidc.example/tenant/cluster/"
	r, err := c.CreateOrUpdate(ctx(t), rg, "id1", "web", ficParams(iss, fedSubject, TokenExchangeAudience), nil)
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := e.Identity("id1")
	if *r.ID != id1.ID+"/federatedIdentityCredentials/web" || *r.Name != "web" || *r.Type != ficType ||
		*r.Properties.Issuer != iss || *r.Properties.Subject != fedSubject || *r.Properties.Audiences[0] != TokenExchangeAudience {
		t.Errorf("created %+v", r.FederatedIdentityCredential)
	}
	// Update in place (same name, new subject), then get and list.
	if _, err := c.CreateOrUpdate(ctx(t), rg, "id1", "web", ficParams(iss, "system:serviceaccount:apps:api", TokenExchangeAudience), nil); err != nil {
		t.Fatal(err)
	}
	g, err := c.Get(ctx(t), rg, "id1", "web", nil)
	if err != nil || *g.Properties.Subject != "system:serviceaccount:apps:api" {
		t.Fatalf("get after update: %v %v", g, err)
	}
	pager := c.NewListPager(rg, "id1", nil)
	page, err := pager.NextPage(ctx(t))
	if err != nil || len(page.Value) != 1 {
		t.Fatalf("list: %v %v", page.Value, err)
	}
	if l, _ := e.FederatedCredentials("id1"); len(l) != 1 || l[0].Subject != "system:serviceaccount:apps:api" {
		t.Errorf("Go API sees %v", l)
	}
	if _, err := c.Delete(ctx(t), rg, "id1", "web", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx(t), rg, "id1", "web", nil); err != nil {
		t.Fatalf("deleting a missing credential is not an error (204): %v", err)
	}
	if _, err := c.Get(ctx(t), rg, "id1", "web", nil); err == nil {
		t.Fatal("get after delete succeeded")
	} else if st, _, _ := armStatus(t, err); st != 404 {
		t.Errorf("get after delete: %d, want 404", st)
	}
	_, err = c.CreateOrUpdate(ctx(t), rg, "nope", "web", ficParams(iss, fedSubject, TokenExchangeAudience), nil)
	if st, code, msg := armStatus(t, err); st != 404 || code != "ParentResourceNotFound" || !strings.Contains(msg, "parent user-assigned identity doesn't exist") {
		t.Errorf("missing identity: %d %s %s", st, code, msg)
	}
	if n := e.Count(CounterKey{Service: ServiceARM, Operation: OpFICPut, Status: 201}); n != 1 {
		t.Errorf("%s 201 counter = %d, want 1", OpFICPut, n)
	}
}

func TestFederatedCredentialValidation(t *testing.T) {
	e := newWorld(t, nil)
	c := ficClient(t, e)
	rg := e.Config().ResourceGroup
	const iss = "https://oidc.example/"
	if _, err := c.CreateOrUpdate(ctx(t), rg, "id1", "first", ficParams(iss, "s0", TokenExchangeAudience), nil); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", MaxFICFieldLength+1)
	for _, tc := range []struct {
		name, fic string
		params    armmsi.FederatedIdentityCredential
		mention   string
	}{
		{"no audience", "aud1", ficParams(iss, "s1"), "exactly one audience"},
		{"two audiences", "aud2", ficParams(iss, "s1", TokenExchangeAudience, "api://other"), "exactly one audience"},
		{"short name", "ab", ficParams(iss, "s1", TokenExchangeAudience), "name 'ab' is invalid"},
		{"name starting with a dash", "-abc", ficParams(iss, "s1", TokenExchangeAudience), "is invalid"},
		{"name with a dot", "a.bc", ficParams(iss, "s1", TokenExchangeAudience), "is invalid"},
		{"issuer too long", "long-iss", ficParams("https://"+long, "s1", TokenExchangeAudience), "issuer is"},
		{"subject too long", "long-sub", ficParams(iss, long, TokenExchangeAudience), "subject is"},
		{"empty properties", "empty", armmsi.FederatedIdentityCredential{Properties: &armmsi.FederatedIdentityCredentialProperties{}}, "empty properties"},
		{"issuer and subject taken", "second", ficParams(iss, "s0", TokenExchangeAudience), "Issuer and subject combination already exists"},
	} {
		_, err := c.CreateOrUpdate(ctx(t), rg, "id1", tc.fic, tc.params, nil)
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		if st, code, msg := armStatus(t, err); st != 400 || code != "BadRequest" || !strings.Contains(msg, tc.mention) {
			t.Errorf("%s: %d %s %s, want 400 BadRequest mentioning %q", tc.name, st, code, msg, tc.mention)
		}
	}
	// Twenty per identity: the 21st fails, updating one of the twenty does not.
	for i := 1; i < MaxFederatedCredentials; i++ {
		if _, err := c.CreateOrUpdate(ctx(t), rg, "id1", fmt.Sprintf("fic-%02d", i), ficParams(iss, fmt.Sprintf("sub-%d", i), TokenExchangeAudience), nil); err != nil {
			t.Fatalf("credential %d: %v", i+1, err)
		}
	}
	_, err := c.CreateOrUpdate(ctx(t), rg, "id1", "fic-21", ficParams(iss, "sub-21", TokenExchangeAudience), nil)
	if st, _, msg := armStatus(t, err); st != 400 || !strings.Contains(msg, "(20)") {
		t.Errorf("21st credential: %d %s", st, msg)
	}
	if _, err := c.CreateOrUpdate(ctx(t), rg, "id1", "fic-01", ficParams(iss, "sub-1b", TokenExchangeAudience), nil); err != nil {
		t.Errorf("updating one of twenty: %v", err)
	}
	// Another identity has its own twenty.
	if _, err := c.CreateOrUpdate(ctx(t), rg, "id2", "fic-21", ficParams(iss, "sub-21", TokenExchangeAudience), nil); err != nil {
		t.Errorf("another identity: %v", err)
	}
}

// Two writes under one identity that overlap: one succeeds, the other gets 409; writes to
// different identities run in parallel.
func TestFederatedCredentialConcurrentWritesConflict(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.Timing.FICWrite = D(300 * time.Millisecond) })
	c := ficClient(t, e)
	rg := e.Config().ResourceGroup
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, target := range []string{"id1", "id1", "id2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 1 {
				time.Sleep(50 * time.Millisecond)
			}
			_, errs[i] = c.CreateOrUpdate(ctx(t), rg, target, fmt.Sprintf("w%d-fic", i), ficParams("https://oidc.example/", fmt.Sprintf("s%d", i), TokenExchangeAudience), nil)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("first write or other identity failed: %v / %v", errs[0], errs[2])
	}
	if st, code, _ := armStatus(t, errs[1]); st != 409 || code != FICConflictCode {
		t.Errorf("overlapping write: %d %s, want 409 %s", st, code, FICConflictCode)
	}
	// Sequential writes succeed.
	if _, err := c.CreateOrUpdate(ctx(t), rg, "id1", "w1-fic", ficParams("https://oidc.example/", "s1", TokenExchangeAudience), nil); err != nil {
		t.Errorf("write after the first ended: %v", err)
	}
}

func TestFederatedCredentialWritesAreThrottled(t *testing.T) {
	e := newWorld(t, nil)
	e.SetThrottlingBuckets(Throttling{Enabled: true, Reads: Bucket{100, 1}, Writes: Bucket{1, 0.001}, Deletes: Bucket{1, 0.001}})
	c := ficClient(t, e)
	rg := e.Config().ResourceGroup
	if _, err := c.CreateOrUpdate(ctx(t), rg, "id1", "one", ficParams("https://oidc.example/", "s1", TokenExchangeAudience), nil); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateOrUpdate(ctx(t), rg, "id1", "two", ficParams("https://oidc.example/", "s2", TokenExchangeAudience), nil)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 429 || re.RawResponse.Header.Get("Retry-After") == "" {
		t.Fatalf("second write with an empty bucket: %v, want 429 with Retry-After", err)
	}
}

func TestWorldAndAdminFederatedCredentials(t *testing.T) {
	_, err := New(Config{UserAssignedIdentities: []IdentityConfig{{Name: "x", FederatedCredentials: []FederatedCredentialConfig{
		{Name: "ok1", Issuer: "https://i/", Subject: "s", Audiences: []string{"a", "b"}}}}}})
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `identity x: federated credential "ok1"`) || !strings.Contains(err.Error(), "exactly one audience") {
		t.Errorf("world file with two audiences: %v", err)
	}
	e := newWorld(t, func(c *Config) {
		c.AppRegistrations = []AppRegistrationConfig{{ClientID: fedApp, FederatedCredentials: []FederatedCredentialConfig{{Name: "gh1", Issuer: "https://i/", Subject: "repo:x"}}}}
	})
	post := func(body string) int {
		resp, err := http.Post(e.AdminURL()+"/federatedCredentials", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if st := post(`{"owner":"` + fedApp + `","name":"gh2","issuer":"https://i/","subject":"repo:y"}`); st != 204 {
		t.Errorf("admin add: %d", st)
	}
	if st := post(`{"owner":"` + fedApp + `","name":"gh3","issuer":"https://i/","subject":"repo:y"}`); st != 400 {
		t.Errorf("admin add of a taken issuer+subject: %d, want 400", st)
	}
	if st := post(`{"owner":"nobody","name":"gh3","issuer":"https://i/","subject":"repo:z"}`); st != 404 {
		t.Errorf("admin add for an unknown owner: %d, want 404", st)
	}
	l, _ := e.FederatedCredentials(fedApp)
	if len(l) != 2 || l[0].Audiences[0] != TokenExchangeAudience {
		t.Errorf("app credentials %v", l)
	}
	req, _ := http.NewRequest(http.MethodDelete, e.AdminURL()+"/federatedCredentials?owner="+fedApp+"&name=gh1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("admin delete: %v %v", resp, err)
	}
	if l, _ := e.FederatedCredentials(fedApp); len(l) != 1 || l[0].Name != "gh2" {
		t.Errorf("after delete %v", l)
	}
}

func ptrs(s []string) []*string {
	out := make([]*string, len(s))
	for i := range s {
		out[i] = &s[i]
	}
	return out
}
