package emulator

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

func selfSigned(t *testing.T) (*x509.Certificate, *rsa.PrivateKey, []byte) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "sp"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, k, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

const certApp = "33333333-3333-3333-3333-333333333333"

func TestClientCertificateCredentialWithPEMAndPKCS12(t *testing.T) {
	cert, key, certPEM := selfSigned(t)
	other, otherKey, _ := selfSigned(t)
	e := newWorld(t, func(c *Config) {
		c.ServicePrincipals = append(c.ServicePrincipals, PrincipalConfig{AppID: certApp, Certificates: []string{string(certPEM)}})
	})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pfx, err := pkcs12.LegacyDES.Encode(key, cert, nil, "pw")
	if err != nil {
		t.Fatal(err)
	}
	opts := &azidentity.ClientCertificateCredentialOptions{ClientOptions: e.ClientOptions(), DisableInstanceDiscovery: true}
	for name, tc := range map[string]struct {
		data []byte
		pw   []byte
	}{"pem": {append(append([]byte{}, certPEM...), keyPEM...), nil}, "pkcs12": {pfx, []byte("pw")}} {
		certs, k, err := azidentity.ParseCertificates(tc.data, tc.pw)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cred, err := azidentity.NewClientCertificateCredential(e.Config().TenantID, certApp, certs, k, opts)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := cred.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c, err := e.VerifyToken(tok.Token); err != nil || c["appid"] != certApp {
			t.Errorf("%s: claims %v err %v", name, c, err)
		}
	}
	// A certificate that is not registered fails with AADSTS700027.
	cred, _ := azidentity.NewClientCertificateCredential(e.Config().TenantID, certApp, []*x509.Certificate{other}, otherKey, opts)
	_, err = cred.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}})
	if err == nil || !strings.Contains(err.Error(), "AADSTS700027") {
		t.Errorf("wrong certificate: want AADSTS700027, got %v", err)
	}
}

func TestRS256AssertionWithX5tIsAccepted(t *testing.T) {
	cert, key, certPEM := selfSigned(t)
	e := newWorld(t, func(c *Config) {
		c.ServicePrincipals = append(c.ServicePrincipals, PrincipalConfig{AppID: certApp, Certificates: []string{string(certPEM)}})
	})
	sum := sha1.Sum(cert.Raw)
	s1 := base64.RawURLEncoding.EncodeToString(sum[:])
	endpoint := e.AADURL() + "/" + e.Config().TenantID + "/oauth2/token"
	send := func(aud, iss string) (int, string) {
		now := time.Now()
		tk := jwtNew("RS256", map[string]any{"aud": aud, "iss": iss, "sub": certApp, "jti": randomID(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()})
		tk.Header["x5t"] = s1
		as, err := tk.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := e.HTTPClient().PostForm(endpoint, url.Values{"grant_type": {"client_credentials"}, "client_id": {certApp},
			"resource": {"https://management.azure.com/"}, "client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {as}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if st, b := send(endpoint, certApp); st != 200 {
		t.Errorf("RS256 assertion: %d %s", st, b)
	}
	if st, b := send("https://elsewhere/token", certApp); st != 401 || !strings.Contains(b, "audience") {
		t.Errorf("wrong aud: %d %s", st, b)
	}
	if st, b := send(endpoint, "someone-else"); st != 401 || !strings.Contains(b, "AADSTS700021") {
		t.Errorf("wrong iss: %d %s", st, b)
	}
}

// miCred returns a ManagedIdentityCredential whose IMDS traffic goes to host's emulated IMDS.
func miCred(t *testing.T, e *Emulator, host string, id azidentity.ManagedIDKind) *azidentity.ManagedIdentityCredential {
	t.Helper()
	hc, err := e.IMDSTransport(host)
	if err != nil {
		t.Fatal(err)
	}
	c, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ClientOptions: azcore.ClientOptions{Transport: hc, Retry: policy.RetryOptions{MaxRetries: -1}}, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var armScope = policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com/.default"}}

func TestManagedIdentityCredentialGetsTokenForAssignedIdentityByClientResourceAndObjectID(t *testing.T) {
	for _, v := range []string{"IDENTITY_ENDPOINT", "MSI_ENDPOINT", "IMDS_ENDPOINT", "IDENTITY_HEADER", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT"} {
		t.Setenv(v, "")
	}
	e := newWorld(t, func(c *Config) { c.VirtualMachineScaleSets[0].UserAssignedIdentities = []string{"id1", "id2"} })
	i1, _ := e.Identity("id1")
	for name, id := range map[string]azidentity.ManagedIDKind{
		"client": azidentity.ClientID(i1.ClientID), "resource": azidentity.ResourceID(i1.ID), "object": azidentity.ObjectID(i1.PrincipalID),
	} {
		tok, err := miCred(t, e, "pool/1", id).GetToken(ctx(t), armScope)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c, err := e.VerifyToken(tok.Token)
		if err != nil {
			t.Fatal(err)
		}
		if c["appid"] != i1.ClientID || c["oid"] != i1.PrincipalID || c["xms_mirid"] != i1.ID || c["aud"] != "https://management.azure.com" {
			t.Errorf("%s: claims %v", name, c)
		}
		if time.Until(tok.ExpiresOn) < 23*time.Hour {
			t.Errorf("%s: expires %v, want ~24h", name, tok.ExpiresOn)
		}
	}
	// vm-0 does not have id3. (MSAL caches managed-identity tokens process-wide, keyed by
	// identity, so the negative case uses an identity never fetched before.)
	i3, _ := e.Identity("id3")
	_, err := miCred(t, e, "vm-0", azidentity.ClientID(i3.ClientID)).GetToken(ctx(t), armScope)
	if err == nil || !strings.Contains(err.Error(), "the requested identity isn't assigned to this resource") || !strings.Contains(err.Error(), "Identity not found") {
		t.Errorf("unassigned identity: %v", err)
	}
	if n := e.Count(CounterKey{Service: ServiceIMDS, Operation: OpIMDSToken, Resource: ComputerName("pool", 1), Status: 200}); n != 0 {
		t.Errorf("counters are keyed by canonical host ID, not computer name: %d", n)
	}
	key := VMSSID(e.Config().SubscriptionID, e.Config().ResourceGroup, "pool") + "/virtualMachines/1"
	if n := e.Count(CounterKey{Service: ServiceIMDS, Operation: OpIMDSToken, Resource: key, Identity: i1.ClientID, Status: 200}); n != 3 {
		t.Errorf("IMDS token count for pool/1 and id1 = %d, want 3", n)
	}
}

// imdsGet sends a raw IMDS request to host and returns status and body.
func imdsGet(t *testing.T, e *Emulator, host, path string, hdr map[string]string) (int, string) {
	t.Helper()
	u, err := e.StartIMDS(host, "")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", u+path, nil)
	req.Header.Set("Metadata", "true")
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

const tokPath = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

func TestIMDSRequestRulesAndIdentitySelection(t *testing.T) {
	e := newWorld(t, func(c *Config) {
		c.VirtualMachines[0].UserAssignedIdentities = []string{"id1", "id2"}
		c.VirtualMachines[1].UserAssignedIdentities = []string{"id1"}
		c.VirtualMachineScaleSets[0].UserAssignedIdentities = []string{"id3"}
	})
	if st, b := imdsGet(t, e, "vm-0", tokPath, map[string]string{"Metadata": ""}); st != 400 || !strings.Contains(b, "Required metadata header not specified") {
		t.Errorf("no Metadata header: %d %s", st, b)
	}
	if st, b := imdsGet(t, e, "vm-0", tokPath, map[string]string{"X-Forwarded-For": "10.0.0.1"}); st != 400 || !strings.Contains(b, "X-Forwarded-For") {
		t.Errorf("X-Forwarded-For: %d %s", st, b)
	}
	if st, b := imdsGet(t, e, "vm-0", tokPath, nil); st != 400 || !strings.Contains(b, "Multiple user assigned identities exist") {
		t.Errorf("two identities, none requested: %d %s", st, b)
	}
	// vm-sys has a system identity and id1: nothing requested → system-assigned.
	st, b := imdsGet(t, e, "vm-sys", tokPath, nil)
	var m map[string]any
	_ = json.Unmarshal([]byte(b), &m)
	if st != 200 {
		t.Fatalf("system-assigned: %d %s", st, b)
	}
	for _, k := range []string{"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in", "not_before", "resource", "token_type"} {
		if _, ok := m[k].(string); !ok {
			t.Errorf("field %s = %#v, want a string", k, m[k])
		}
	}
	c, _ := e.VerifyToken(m["access_token"].(string))
	if c["xms_mirid"] != VMID(e.Config().SubscriptionID, e.Config().ResourceGroup, "vm-sys") {
		t.Errorf("system token mirid = %v", c["xms_mirid"])
	}
	// Exactly one assigned, nothing requested → that one; msi_res_id is honoured like mi_res_id.
	i3, _ := e.Identity("id3")
	for _, p := range []string{tokPath, tokPath + "&msi_res_id=" + url.QueryEscape(strings.ToUpper(i3.ID)), tokPath + "&mi_res_id=" + url.QueryEscape(i3.ID)} {
		st, b := imdsGet(t, e, ComputerName("pool", 0), p, nil)
		if st != 200 || !strings.Contains(b, `"client_id":"`+i3.ClientID+`"`) {
			t.Errorf("%s: %d %s", p, st, b)
		}
	}
	// Same identity and resource → the cached token.
	_, b1 := imdsGet(t, e, "pool/0", tokPath, nil)
	_, b2 := imdsGet(t, e, "pool/1", tokPath, nil)
	var t1, t2 map[string]any
	_ = json.Unmarshal([]byte(b1), &t1)
	_ = json.Unmarshal([]byte(b2), &t2)
	if t1["access_token"] != t2["access_token"] {
		t.Error("IMDS did not reuse the cached token for the same (identity, resource)")
	}
	if st, _ := imdsGet(t, e, "vm-0", "/metadata/instance?api-version=2021-02-01", nil); st != 200 {
		t.Errorf("instance metadata: %d", st)
	}
	if st, _ := imdsGet(t, e, "vm-0", "/metadata/identity/foo", nil); st != 404 {
		t.Errorf("unknown path: %d, want 404", st)
	}
}

func TestIMDSServesNewIdentityOnlyAfterOperationAndPropagationDelay(t *testing.T) {
	e := newWorld(t, func(c *Config) {
		c.Timing.VMOperation = D(200 * time.Millisecond)
		c.Timing.IMDSPropagation = D(300 * time.Millisecond)
	})
	i1, _ := e.Identity("id1")
	p := tokPath + "&client_id=" + i1.ClientID
	cl := vmClient(t, e, testApp)
	poller, err := cl.BeginUpdate(ctx(t), e.Config().ResourceGroup, "vm-0", vmAdd(e, "id1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := imdsGet(t, e, "vm-0", p, nil); st != 400 {
		t.Errorf("during the operation: %d, want 400", st)
	}
	if _, err := poller.PollUntilDone(ctx(t), poll); err != nil {
		t.Fatal(err)
	}
	done := time.Now()
	if st, b := imdsGet(t, e, "vm-0", p, nil); st != 400 || !strings.Contains(b, "Identity not found") {
		t.Errorf("right after the operation: %d %s, want Identity not found", st, b)
	}
	for time.Since(done) < 2*time.Second {
		if st, _ := imdsGet(t, e, "vm-0", p, nil); st == 200 {
			if el := time.Since(done); el < 200*time.Millisecond {
				t.Errorf("served after %v, want ≥ the propagation delay", el)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("identity never became available")
}

func TestIMDSLimitsAnswer429(t *testing.T) {
	e := newWorld(t, func(c *Config) {
		c.VirtualMachines[0].UserAssignedIdentities = []string{"id1"}
		c.IMDS = IMDSLimits{RequestsPerSecond: 5}
	})
	n429 := 0
	for i := 0; i < 8; i++ {
		if st, _ := imdsGet(t, e, "vm-0", tokPath, nil); st == 429 {
			n429++
		}
	}
	if n429 != 3 {
		t.Errorf("8 quick requests with 5 req/s: %d answered 429, want 3", n429)
	}
	// Concurrency: hold requests with latency.
	e.SetIMDSLimits(IMDSLimits{MaxConcurrent: 5})
	e.AddFault(Fault{Service: ServiceIMDS, Operation: OpIMDSToken, Latency: D(300 * time.Millisecond)})
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < 7; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, _ := imdsGet(t, e, "vm-0", tokPath, nil)
			mu.Lock()
			codes[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[200] != 5 || codes[429] != 2 {
		t.Errorf("7 concurrent requests with limit 5: %v", codes)
	}
}

func vmAdd(e *Emulator, name string) armcomputeVMUpdate {
	return armcomputeVMUpdate{Identity: &armcomputeVMIdentity{Type: to(uaType),
		UserAssignedIdentities: map[string]*armcomputeUAValue{idID(e, name): {}}}}
}

func TestUserAssignedIdentityCRUDWithDeleteRecreateQuirk(t *testing.T) {
	e := newWorld(t, func(c *Config) { c.VirtualMachines[0].UserAssignedIdentities = []string{"id1"} })
	cl, err := armmsi.NewUserAssignedIdentitiesClient(e.Config().SubscriptionID, secretCred(t, e, testApp, testSecret), e.ARMClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	rg := e.Config().ResourceGroup
	created, err := cl.CreateOrUpdate(ctx(t), rg, "fresh", armmsi.Identity{Location: to("westus2")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := cl.Get(ctx(t), rg, "fresh", nil)
	if err != nil || *got.Properties.ClientID != *created.Properties.ClientID || *got.Properties.TenantID != e.Config().TenantID {
		t.Fatalf("get after create: %v %+v", err, got)
	}
	old, _ := e.Identity("id1")
	if _, err := cl.Delete(ctx(t), rg, "id1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Get(ctx(t), rg, "id1", nil); respErr(t, err).StatusCode != 404 {
		t.Errorf("get after delete: %v", err)
	}
	re, err := cl.CreateOrUpdate(ctx(t), rg, "id1", armmsi.Identity{Location: to("westus2")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if *re.Properties.ClientID == old.ClientID {
		t.Fatal("re-created identity kept its client ID; want a new one")
	}
	// The VM still lists id1, with null IDs, and IMDS does not serve it under either ID.
	vm, _ := vmClient(t, e, testApp).Get(ctx(t), rg, "vm-0", nil)
	for _, v := range vm.Identity.UserAssignedIdentities {
		if v.ClientID != nil || v.PrincipalID != nil {
			t.Errorf("stale entry shows IDs %v/%v, want null", v.ClientID, v.PrincipalID)
		}
	}
	for _, q := range []string{"&client_id=" + *re.Properties.ClientID, "&client_id=" + old.ClientID, "&mi_res_id=" + url.QueryEscape(old.ID)} {
		if st, b := imdsGet(t, e, "vm-0", tokPath+q, nil); st != 400 || !strings.Contains(b, "Identity not found") {
			t.Errorf("%s: %d %s, want Identity not found", q, st, b)
		}
	}
	// Remove and re-add: served again.
	vc := vmClient(t, e, testApp)
	p, _ := vc.BeginUpdate(ctx(t), rg, "vm-0", armcomputeVMUpdate{Identity: &armcomputeVMIdentity{Type: to(noneType)}}, nil)
	if _, err := p.PollUntilDone(ctx(t), poll); err != nil {
		t.Fatal(err)
	}
	p, _ = vc.BeginUpdate(ctx(t), rg, "vm-0", vmAdd(e, "id1"), nil)
	if _, err := p.PollUntilDone(ctx(t), poll); err != nil {
		t.Fatal(err)
	}
	if st, b := imdsGet(t, e, "vm-0", tokPath+"&client_id="+*re.Properties.ClientID, nil); st != 200 {
		t.Errorf("after remove and re-add: %d %s", st, b)
	}
}

func TestFaultInjectionFailsNextCallsAndCountsThem(t *testing.T) {
	e := newWorld(t, nil)
	cl := vmClient(t, e, testApp)
	rg := e.Config().ResourceGroup
	e.AddFault(Fault{Service: ServiceARM, Operation: OpVMGet, Count: 2, Status: 500, Code: "InternalServerError", Message: "boom"})
	cl2, _ := newNoRetryVMClient(e)
	for i := 0; i < 2; i++ {
		if _, err := cl2.Get(ctx(t), rg, "vm-0", nil); respErr(t, err).StatusCode != 500 {
			t.Errorf("call %d: %v", i, err)
		}
	}
	if _, err := cl.Get(ctx(t), rg, "vm-0", nil); err != nil {
		t.Errorf("third call should pass: %v", err)
	}
	if n := e.Count(CounterKey{Service: ServiceARM, Operation: OpVMGet, Status: 500}); n != 2 {
		t.Errorf("500 count = %d", n)
	}
	// An async fault lets the PATCH through but fails its operation.
	e.AddFault(Fault{Service: ServiceARM, Operation: OpVMUpdate, Count: 1, Async: true, Code: "InternalExecutionError", Message: "async boom"})
	p, err := cl.BeginUpdate(ctx(t), rg, "vm-0", vmAdd(e, "id1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.PollUntilDone(ctx(t), poll); err == nil || !strings.Contains(err.Error(), "async boom") {
		t.Errorf("async fault: %v", err)
	}
	if ids, _ := e.AssignedIdentities("vm-0"); len(ids) != 0 {
		t.Errorf("failed operation changed state: %v", ids)
	}
}

func TestAdminAPIChangesWorldOutOfBand(t *testing.T) {
	e := newWorld(t, nil)
	do := func(method, path, body string) int {
		req, _ := http.NewRequest(method, e.AdminURL()+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := do("POST", "/assignments", `{"resource":"pool","identity":"id2"}`); st != 204 {
		t.Fatalf("assign: %d", st)
	}
	if st, _ := imdsGet(t, e, "pool/0", tokPath, nil); st != 200 {
		t.Errorf("IMDS after admin assign: %d", st)
	}
	if st := do("DELETE", "/assignments?resource=pool&identity=id2", ""); st != 204 {
		t.Fatalf("remove: %d", st)
	}
	if st, _ := imdsGet(t, e, "pool/0", tokPath, nil); st != 400 {
		t.Errorf("IMDS after admin remove: %d", st)
	}
	if st := do("POST", "/faults", `{"service":"imds","operation":"Token","count":1,"status":500}`); st != 204 {
		t.Fatalf("fault: %d", st)
	}
	e.AssignIdentity("vm-0", "id1")
	if st, _ := imdsGet(t, e, "vm-0", tokPath, nil); st != 500 {
		t.Errorf("faulted call: %d", st)
	}
	resp, err := http.Get(e.AdminURL() + "/counters?service=imds&status=500")
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ Total int64 }
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if out.Total != 1 {
		t.Errorf("admin counters total = %d, want 1", out.Total)
	}
	if st := do("DELETE", "/identities/id1", ""); st != 204 {
		t.Errorf("delete identity: %d", st)
	}
	if st := do("POST", "/identities", `{"name":"id1"}`); st != 200 {
		t.Errorf("re-create identity: %d", st)
	}
	if st, b := imdsGet(t, e, "vm-0", tokPath, nil); st != 400 || !strings.Contains(b, "Identity not found") {
		t.Errorf("after out-of-band re-create: %d %s", st, b)
	}
}
