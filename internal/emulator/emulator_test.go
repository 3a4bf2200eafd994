package emulator

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/golang-jwt/jwt/v5"
)

const (
	testApp    = "11111111-1111-1111-1111-111111111111"
	testSecret = "s3cret"
	deniedApp  = "22222222-2222-2222-2222-222222222222"
)

var poll = &runtime.PollUntilDoneOptions{Frequency: 20 * time.Millisecond}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// newWorld starts an emulator with two VMs, one scale set, three identities and two principals.
func newWorld(t *testing.T, mod func(*Config)) *Emulator {
	t.Helper()
	cfg := Config{
		VirtualMachines:         []VMConfig{{Name: "vm-0"}, {Name: "vm-sys", SystemAssigned: true}},
		VirtualMachineScaleSets: []VMSSConfig{{Name: "pool", Instances: 2}},
		UserAssignedIdentities:  []IdentityConfig{{Name: "id1"}, {Name: "id2"}, {Name: "id3"}},
		ServicePrincipals: []PrincipalConfig{
			{AppID: testApp, Secrets: []string{testSecret}},
			{AppID: deniedApp, Secrets: []string{testSecret}, DeniedIdentities: []string{"id3"}},
		},
		Timing: FastTiming(),
	}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := e.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func secretCred(t *testing.T, e *Emulator, app, secret string) azcore.TokenCredential {
	t.Helper()
	c, err := azidentity.NewClientSecretCredential(e.Config().TenantID, app, secret,
		&azidentity.ClientSecretCredentialOptions{ClientOptions: e.ClientOptions(), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func vmClient(t *testing.T, e *Emulator, app string) *armcompute.VirtualMachinesClient {
	c, err := armcompute.NewVirtualMachinesClient(e.Config().SubscriptionID, secretCred(t, e, app, testSecret), e.ARMClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func vmssClient(t *testing.T, e *Emulator) *armcompute.VirtualMachineScaleSetsClient {
	c, err := armcompute.NewVirtualMachineScaleSetsClient(e.Config().SubscriptionID, secretCred(t, e, testApp, testSecret), e.ARMClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func idID(e *Emulator, name string) string {
	return IdentityID(e.Config().SubscriptionID, e.Config().ResourceGroup, name)
}

func userIDs(id *armcompute.VirtualMachineIdentity) []string {
	if id == nil {
		return nil
	}
	var out []string
	for k := range id.UserAssignedIdentities {
		out = append(out, strings.ToLower(k))
	}
	return out
}

func respErr(t *testing.T, err error) *azcore.ResponseError {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("want *azcore.ResponseError, got %v", err)
	}
	return re
}

func TestClientSecretCredentialTokenVerifiesAgainstJWKSWithClaims(t *testing.T) {
	e := newWorld(t, nil)
	tok, err := secretCred(t, e, testApp, testSecret).GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
	if err != nil {
		t.Fatal(err)
	}
	// Fetch the JWKS over HTTPS, as a relying party would, and verify with it.
	resp, err := e.HTTPClient().Get(e.AADURL() + "/" + e.Config().TenantID + "/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ Kid, N, E string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("jwks: %v %+v", err, set)
	}
	claims := jwt.MapClaims{}
	parsed, err := jwt.ParseWithClaims(tok.Token, claims, func(t *jwt.Token) (any, error) {
		if t.Header["kid"] != set.Keys[0].Kid {
			return nil, errors.New("kid not in JWKS")
		}
		return jwkToRSA(set.Keys[0].N, set.Keys[0].E)
	})
	if err != nil || !parsed.Valid {
		t.Fatalf("token does not verify against JWKS: %v", err)
	}
	want := map[string]string{"aud": "https://management.azure.com", "tid": e.Config().TenantID, "appid": testApp,
		"azp": testApp, "iss": e.Issuer(e.Config().TenantID), "oid": derivedGUID("sp:" + testApp)}
	for k, v := range want {
		if claims[k] != v {
			t.Errorf("claim %s = %v, want %v", k, claims[k], v)
		}
	}
	for _, k := range []string{"iat", "nbf", "exp", "uti"} {
		if claims[k] == nil {
			t.Errorf("claim %s missing", k)
		}
	}
	tok2, _ := secretCred(t, e, testApp, testSecret).GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
	c2, _ := e.VerifyToken(tok2.Token)
	if c2["uti"] == claims["uti"] {
		t.Error("two tokens share a uti; want unique")
	}
}

func TestWrongSecretFailsWithAADSTS7000215(t *testing.T) {
	e := newWorld(t, nil)
	_, err := secretCred(t, e, testApp, "wrong").GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
	if err == nil || !strings.Contains(err.Error(), "AADSTS7000215: Invalid client secret provided") {
		t.Fatalf("want AADSTS7000215, got %v", err)
	}
}

func TestUnknownClientAndTenantAndScopeFailWithAADSTSCodes(t *testing.T) {
	e := newWorld(t, nil)
	_, err := secretCred(t, e, "99999999-9999-9999-9999-999999999999", testSecret).GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
	if err == nil || !strings.Contains(err.Error(), "AADSTS700016") {
		t.Errorf("unknown client: want AADSTS700016, got %v", err)
	}
	c, _ := azidentity.NewClientSecretCredential("00000000-dead-beef-0000-000000000000", testApp, testSecret,
		&azidentity.ClientSecretCredentialOptions{ClientOptions: e.ClientOptions(), DisableInstanceDiscovery: true})
	_, err = c.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
	if err == nil || !strings.Contains(err.Error(), "AADSTS90002") {
		t.Errorf("unknown tenant: want AADSTS90002, got %v", err)
	}
	// Raw v2 request with a scope lacking /.default.
	resp, err := e.HTTPClient().PostForm(e.AADURL()+"/"+e.Config().TenantID+"/oauth2/v2.0/token", map[string][]string{
		"grant_type": {"client_credentials"}, "client_id": {testApp}, "client_secret": {testSecret}, "scope": {"https://management.azure.com/"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"error":"invalid_scope"`) || !strings.Contains(string(b), "AADSTS1002012") {
		t.Errorf("invalid scope: got %d %s", resp.StatusCode, b)
	}
}

// A principal registered in further tenants gets tokens in each (tid = the tenant asked for);
// a principal registered only at home is still refused in another known tenant.
func TestMultiTenantPrincipalGetsTokensInEachTenant(t *testing.T) {
	const other = "0f0f0f0f-1111-2222-3333-444444444444"
	e := newWorld(t, func(c *Config) {
		c.ServicePrincipals[0].Tenants = []string{other}
	})
	home := e.Config().TenantID
	c, err := azidentity.NewClientSecretCredential(home, testApp, testSecret, &azidentity.ClientSecretCredentialOptions{
		ClientOptions: e.ClientOptions(), DisableInstanceDiscovery: true, AdditionallyAllowedTenants: []string{other}})
	if err != nil {
		t.Fatal(err)
	}
	oids := map[string]any{}
	for _, tenant := range []string{home, other} {
		tok, err := c.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}, TenantID: tenant})
		if err != nil {
			t.Fatalf("tenant %s: %v", tenant, err)
		}
		claims, err := e.VerifyToken(tok.Token)
		if err != nil || claims["tid"] != tenant || claims["iss"] != e.Issuer(tenant) || claims["appid"] != testApp {
			t.Errorf("tenant %s: token claims tid=%v iss=%v appid=%v (%v)", tenant, claims["tid"], claims["iss"], claims["appid"], err)
		}
		oids[tenant] = claims["oid"]
	}
	// One service principal per tenant, each with its own object ID.
	if oids[home] == nil || oids[home] == oids[other] {
		t.Errorf("object IDs by tenant %v: want a different one per tenant", oids)
	}
	d, err := azidentity.NewClientSecretCredential(other, deniedApp, testSecret, &azidentity.ClientSecretCredentialOptions{
		ClientOptions: e.ClientOptions(), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}}); err == nil || !strings.Contains(err.Error(), "AADSTS700016") {
		t.Errorf("single-tenant app in another tenant: want AADSTS700016, got %v", err)
	}
}

func TestV1TokenEndpointReturnsStringNumbers(t *testing.T) {
	e := newWorld(t, nil)
	resp, err := e.HTTPClient().PostForm(e.AADURL()+"/"+e.Config().TenantID+"/oauth2/token", map[string][]string{
		"grant_type": {"client_credentials"}, "client_id": {testApp}, "client_secret": {testSecret}, "resource": {"https://management.azure.com/"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v", resp.StatusCode, err)
	}
	for _, k := range []string{"expires_in", "ext_expires_in", "expires_on", "not_before", "resource", "access_token", "token_type"} {
		if _, ok := m[k].(string); !ok {
			t.Errorf("%s = %#v, want a string", k, m[k])
		}
	}
}

func TestARMRejectsTokensWithoutARMAudience(t *testing.T) {
	e := newWorld(t, nil)
	tok, err := secretCred(t, e, testApp, testSecret).GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, auth := range map[string]string{"vault audience": "Bearer " + tok.Token, "none": "", "garbage": "Bearer abc.def.ghi"} {
		req, _ := http.NewRequest("GET", e.ARMURL()+VMID(e.Config().SubscriptionID, e.Config().ResourceGroup, "vm-0")+"?api-version=2026-04-01", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := e.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(string(b), `"code":"`) {
			t.Errorf("%s: got %d %s, want 401 with an ARM error", name, resp.StatusCode, b)
		}
	}
}

func TestVMSSPatchAddsAndRemovesIdentitiesInOneRequest(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.VirtualMachineScaleSets[0].UserAssignedIdentities = []string{"id1"} })
	cl := vmssClient(t, e)
	rg := e.Config().ResourceGroup
	p, err := cl.BeginUpdate(ctx(t), rg, "pool", armcompute.VirtualMachineScaleSetUpdate{Identity: &armcompute.VirtualMachineScaleSetIdentity{
		Type: to(armcompute.ResourceIdentityTypeUserAssigned),
		UserAssignedIdentities: map[string]*armcompute.UserAssignedIdentitiesValue{
			strings.ToLower(idID(e, "id1")): nil, // removal with a differently-cased ID
			idID(e, "id2"):                  {},
			idID(e, "id3"):                  {},
		}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.PollUntilDone(ctx(t), poll)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*armcompute.UserAssignedIdentitiesValue{}
	for k, v := range res.Identity.UserAssignedIdentities {
		got[strings.ToLower(k)] = v
	}
	if len(got) != 2 || got[strings.ToLower(idID(e, "id2"))] == nil || got[strings.ToLower(idID(e, "id3"))] == nil {
		t.Fatalf("identities after PATCH = %v, want id2 and id3", got)
	}
	i2, _ := e.Identity("id2")
	if v := got[strings.ToLower(idID(e, "id2"))]; *v.ClientID != i2.ClientID || *v.PrincipalID != i2.PrincipalID {
		t.Errorf("id2 entry = %s/%s, want %s/%s", *v.ClientID, *v.PrincipalID, i2.ClientID, i2.PrincipalID)
	}
	if *res.Properties.ProvisioningState != "Succeeded" {
		t.Errorf("provisioningState = %s", *res.Properties.ProvisioningState)
	}
	if n := e.Count(CounterKey{Service: ServiceARM, Operation: OpVMSSUpdate}); n != 1 {
		t.Errorf("VMSS update count = %d, want 1", n)
	}
}

func to[T any](v T) *T { return &v }

func TestVMReadsSeeOldStateAndSecondWriteGets409DuringOperation(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.Timing.VMOperation = D(400 * time.Millisecond) })
	cl := vmClient(t, e, testApp)
	rg := e.Config().ResourceGroup
	upd := armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: to(armcompute.ResourceIdentityTypeUserAssigned),
		UserAssignedIdentities: map[string]*armcompute.UserAssignedIdentitiesValue{idID(e, "id1"): {}}}}
	p, err := cl.BeginUpdate(ctx(t), rg, "vm-0", upd, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cl.Get(ctx(t), rg, "vm-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(userIDs(g.Identity)) != 0 || *g.Properties.ProvisioningState != "Updating" {
		t.Errorf("during the operation GET shows %v / %s, want no identities and Updating", userIDs(g.Identity), *g.Properties.ProvisioningState)
	}
	_, err = cl.BeginUpdate(ctx(t), rg, "vm-0", upd, nil)
	if re := respErr(t, err); re.StatusCode != 409 || re.ErrorCode != ConflictCode {
		t.Errorf("second write: %d %s, want 409 %s", re.StatusCode, re.ErrorCode, ConflictCode)
	}
	if _, err := p.PollUntilDone(ctx(t), poll); err != nil {
		t.Fatal(err)
	}
	g, _ = cl.Get(ctx(t), rg, "vm-0", nil)
	if ids := userIDs(g.Identity); len(ids) != 1 || *g.Identity.Type != armcompute.ResourceIdentityTypeUserAssigned {
		t.Errorf("after the operation: %v %v", ids, *g.Identity.Type)
	}
	if n := e.Count(CounterKey{Service: ServiceARM, Operation: OpOperationGet}); n < 1 {
		t.Errorf("poller made %d operation polls, want ≥ 1", n)
	}
}

func TestVMTypeTransitionsKeepSystemAssignedPrincipal(t *testing.T) {
	e := newWorld(t, nil)
	cl := vmClient(t, e, testApp)
	rg := e.Config().ResourceGroup
	before, _ := cl.Get(ctx(t), rg, "vm-sys", nil)
	sysPID := *before.Identity.PrincipalID
	steps := []struct {
		typ  armcompute.ResourceIdentityType
		ids  map[string]*armcompute.UserAssignedIdentitiesValue
		want armcompute.ResourceIdentityType
		n    int
	}{
		{armcompute.ResourceIdentityTypeSystemAssignedUserAssigned, map[string]*armcompute.UserAssignedIdentitiesValue{idID(e, "id1"): {}}, armcompute.ResourceIdentityTypeSystemAssignedUserAssigned, 1},
		{armcompute.ResourceIdentityTypeSystemAssigned, nil, armcompute.ResourceIdentityTypeSystemAssigned, 0},
		{armcompute.ResourceIdentityTypeSystemAssignedUserAssigned, map[string]*armcompute.UserAssignedIdentitiesValue{idID(e, "id2"): {}}, armcompute.ResourceIdentityTypeSystemAssignedUserAssigned, 1},
	}
	for i, s := range steps {
		p, err := cl.BeginUpdate(ctx(t), rg, "vm-sys", armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: &s.typ, UserAssignedIdentities: s.ids}}, nil)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		r, err := p.PollUntilDone(ctx(t), poll)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if *r.Identity.Type != s.want || len(r.Identity.UserAssignedIdentities) != s.n || *r.Identity.PrincipalID != sysPID {
			t.Errorf("step %d: type %s, %d user identities, principal %s; want %s, %d, %s", i, *r.Identity.Type, len(r.Identity.UserAssignedIdentities), *r.Identity.PrincipalID, s.want, s.n, sysPID)
		}
	}
	// UserAssigned → None removes everything.
	cl.BeginUpdate(ctx(t), rg, "vm-0", armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: to(armcompute.ResourceIdentityTypeUserAssigned),
		UserAssignedIdentities: map[string]*armcompute.UserAssignedIdentitiesValue{idID(e, "id1"): {}}}}, nil)
	time.Sleep(300 * time.Millisecond)
	p, err := cl.BeginUpdate(ctx(t), rg, "vm-0", armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: to(armcompute.ResourceIdentityTypeNone)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.PollUntilDone(ctx(t), poll)
	if err != nil {
		t.Fatal(err)
	}
	if r.Identity != nil && len(r.Identity.UserAssignedIdentities) != 0 {
		t.Errorf("after None: %+v", r.Identity)
	}
}

func TestPatchErrorsUseARMBodies(t *testing.T) {
	e := newWorld(t, nil)
	cl := vmClient(t, e, testApp)
	rg := e.Config().ResourceGroup
	many := map[string]*armcompute.UserAssignedIdentitiesValue{}
	for i := 0; i < 151; i++ {
		many[IdentityID(e.Config().SubscriptionID, rg, "x"+strconv.Itoa(i))] = &armcompute.UserAssignedIdentitiesValue{}
	}
	ua := to(armcompute.ResourceIdentityTypeUserAssigned)
	_, err := cl.BeginUpdate(ctx(t), rg, "vm-0", armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: ua, UserAssignedIdentities: many}}, nil)
	if re := respErr(t, err); re.StatusCode != 400 || !strings.Contains(err.Error(), "User Assigned Identities Number '151' Assign exceed limit '150' in one request") {
		t.Errorf("151 identities: %v", err)
	}
	ghost := IdentityID(e.Config().SubscriptionID, rg, "ghost")
	_, err = cl.BeginUpdate(ctx(t), rg, "vm-0", armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: ua,
		UserAssignedIdentities: map[string]*armcompute.UserAssignedIdentitiesValue{ghost: {}, idID(e, "id1"): {}}}}, nil)
	if re := respErr(t, err); re.ErrorCode != "FailedIdentityOperation" || !strings.Contains(err.Error(), ghost) || strings.Contains(err.Error(), idID(e, "id1")+"'") {
		t.Errorf("unknown identity: %v", err)
	}
	denied := vmClient(t, e, deniedApp)
	_, err = denied.BeginUpdate(ctx(t), rg, "vm-0", armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{Type: ua,
		UserAssignedIdentities: map[string]*armcompute.UserAssignedIdentitiesValue{idID(e, "id3"): {}, idID(e, "id1"): {}}}}, nil)
	if re := respErr(t, err); re.StatusCode != 403 || re.ErrorCode != "LinkedAuthorizationFailed" || !strings.Contains(err.Error(), idID(e, "id3")) {
		t.Errorf("denied identity: %v", err)
	}
	_, err = cl.Get(ctx(t), rg, "nope", nil)
	if re := respErr(t, err); re.StatusCode != 404 || re.ErrorCode != "ResourceNotFound" {
		t.Errorf("missing VM: %v", err)
	}
	if err := e.SetProvisioningState("pool", "Deleting"); err != nil {
		t.Fatal(err)
	}
	_, err = vmssClient(t, e).BeginUpdate(ctx(t), rg, "pool", armcompute.VirtualMachineScaleSetUpdate{Identity: &armcompute.VirtualMachineScaleSetIdentity{Type: ua,
		UserAssignedIdentities: map[string]*armcompute.UserAssignedIdentitiesValue{idID(e, "id1"): {}}}}, nil)
	if re := respErr(t, err); re.StatusCode != 409 || re.ErrorCode != "OperationNotAllowed" {
		t.Errorf("Deleting VMSS: %v", err)
	}
}

func TestThrottled429IsHonouredThroughRetryAfter(t *testing.T) {
	e := newWorld(t, func(c *Config) {
		c.Throttling = Throttling{Enabled: true, Reads: Bucket{Capacity: 2, RefillPerSecond: 2}}
	})
	cl := vmClient(t, e, testApp)
	rg := e.Config().ResourceGroup
	start := time.Now()
	for i := 0; i < 4; i++ {
		if _, err := cl.Get(ctx(t), rg, "vm-0", nil); err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
	}
	if n := e.Count(CounterKey{Service: ServiceARM, Operation: OpVMGet, Status: 429}); n < 1 {
		t.Errorf("got %d throttled answers, want ≥ 1", n)
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Errorf("4 reads with a 2-token bucket took %v; the SDK should have waited Retry-After (1 s)", el)
	}
	// Raw: a 429 carries Retry-After and the remaining-reads header.
	e.SetThrottling(true)
	tok, _ := secretCred(t, e, testApp, testSecret).GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
	var last *http.Response
	for i := 0; i < 3; i++ {
		req, _ := http.NewRequest("GET", e.ARMURL()+VMID(e.Config().SubscriptionID, rg, "vm-0"), nil)
		req.Header.Set("Authorization", "Bearer "+tok.Token)
		last, _ = e.HTTPClient().Do(req)
		last.Body.Close()
	}
	if last.StatusCode != 429 || last.Header.Get("Retry-After") == "" || last.Header.Get("x-ms-ratelimit-remaining-subscription-reads") != "0" {
		t.Errorf("third read: %d Retry-After=%q remaining=%q", last.StatusCode, last.Header.Get("Retry-After"), last.Header.Get("x-ms-ratelimit-remaining-subscription-reads"))
	}
}

func jwkToRSA(n, e string) (*rsa.PublicKey, error) {
	nb, err := base64.RawURLEncoding.DecodeString(n)
	if err != nil {
		return nil, err
	}
	eb, err := base64.RawURLEncoding.DecodeString(e)
	if err != nil {
		return nil, err
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: int(new(big.Int).SetBytes(eb).Int64())}, nil
}

func TestSampleWorldFileLoadsAndServesEveryHost(t *testing.T) {
	cfg, err := Load("../../examples/emulator/world.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timing = FastTiming()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if h := e.Hosts(); len(h) != 3 {
		t.Errorf("hosts = %v, want 1 VM + 2 instances", h)
	}
	if i, err := e.Identity("demo-identity"); err != nil || i.ClientID != "9a2c3b1e-0f0e-4c1f-8e0d-5d4c3b2a1f00" {
		t.Errorf("demo-identity = %+v, %v", i, err)
	}
	if f, err := e.FederatedCredentials("keyvault-reader"); err != nil || len(f) != 1 || f[0].Subject != "system:serviceaccount:demo:web" {
		t.Errorf("keyvault-reader federated credentials = %+v, %v", f, err)
	}
	if f, err := e.FederatedCredentials("5d6e7f80-9a1b-4c2d-8e3f-405162738495"); err != nil || len(f) != 1 {
		t.Errorf("app registration federated credentials = %+v, %v", f, err)
	}
	if _, err := Load("../../examples/emulator/nope.yaml"); err == nil {
		t.Error("loading a missing file should fail")
	}
}

func TestVMSSInstancesGetAndListShowScaleSetIdentities(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.VirtualMachineScaleSets[0].UserAssignedIdentities = []string{"id1"} })
	cl, err := armcompute.NewVirtualMachineScaleSetVMsClient(e.Config().SubscriptionID, secretCred(t, e, testApp, testSecret), e.ARMClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	rg := e.Config().ResourceGroup
	vm, err := cl.Get(ctx(t), rg, "pool", "1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *vm.InstanceID != "1" || *vm.Properties.OSProfile.ComputerName != ComputerName("pool", 1) || len(vm.Identity.UserAssignedIdentities) != 1 {
		t.Errorf("instance 1 = %s %s %v", *vm.InstanceID, *vm.Properties.OSProfile.ComputerName, vm.Identity)
	}
	n := 0
	for pg := cl.NewListPager(rg, "pool", nil); pg.More(); {
		page, err := pg.NextPage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.Value)
	}
	if n != 2 {
		t.Errorf("listed %d instances, want 2", n)
	}
	if _, err := cl.Get(ctx(t), rg, "pool", "7", nil); respErr(t, err).StatusCode != 404 {
		t.Errorf("missing instance: %v", err)
	}
}

// Someone assigning or removing an identity by hand while MIC's PATCH runs: the PATCH's own change
// lands, and so does theirs (the operation does not overwrite the block with a stale copy).
func TestOutOfBandChangesDuringAnOperationSurviveIt(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.Timing.VMOperation = D(300 * time.Millisecond) })
	if err := e.AssignIdentity("vm-0", "id3"); err != nil {
		t.Fatal(err)
	}
	cl := vmClient(t, e, testApp)
	rg := e.Config().ResourceGroup
	p, err := cl.BeginUpdate(ctx(t), rg, "vm-0", armcompute.VirtualMachineUpdate{Identity: &armcompute.VirtualMachineIdentity{
		Type: to(armcompute.ResourceIdentityTypeUserAssigned), UserAssignedIdentities: map[string]*armcompute.UserAssignedIdentitiesValue{idID(e, "id1"): {}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.AssignIdentity("vm-0", "id2"); err != nil {
		t.Fatal(err)
	}
	if err := e.RemoveIdentity("vm-0", "id3"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.PollUntilDone(ctx(t), poll); err != nil {
		t.Fatal(err)
	}
	got, err := e.AssignedIdentities("vm-0")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{idID(e, "id1"), idID(e, "id2")}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("after the operation the VM has %v, want %v", got, want)
	}
}
