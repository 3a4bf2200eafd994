package emulator

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/golang-jwt/jwt/v5"
)

// testIssuer is an OIDC issuer on 127.0.0.1 over HTTPS that signs tokens with keys it publishes.
type testIssuer struct {
	srv  *httptest.Server
	URL  string // the issuer, with a trailing slash as AKS spells it
	mu   sync.Mutex
	jwks []map[string]any
	hits int
}

func newTestIssuer(t *testing.T) *testIssuer {
	t.Helper()
	is := &testIssuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		is.mu.Lock()
		is.hits++
		is.mu.Unlock()
		writeJSON(w, 200, map[string]any{"issuer": is.URL, "jwks_uri": is.srv.URL + "/openid/v1/jwks",
			"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"}})
	})
	mux.HandleFunc("GET /openid/v1/jwks", func(w http.ResponseWriter, _ *http.Request) {
		is.mu.Lock()
		defer is.mu.Unlock()
		writeJSON(w, 200, map[string]any{"keys": is.jwks})
	})
	is.srv = httptest.NewTLSServer(mux)
	t.Cleanup(is.srv.Close)
	is.URL = is.srv.URL + "/"
	return is
}

func (is *testIssuer) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw})
}

// publish replaces the JWKS with these keys (kid → public key).
func (is *testIssuer) publish(keys map[string]crypto.PublicKey) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.jwks = nil
	b64 := base64.RawURLEncoding.EncodeToString
	for kid, k := range keys {
		switch k := k.(type) {
		case *rsa.PublicKey:
			is.jwks = append(is.jwks, map[string]any{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
				"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())})
		case *ecdsa.PublicKey:
			raw, _ := k.Bytes()
			is.jwks = append(is.jwks, map[string]any{"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
				"x": b64(raw[1:33]), "y": b64(raw[33:])})
		}
	}
}

func sign(t *testing.T, alg, kid string, key crypto.Signer, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const fedSubject = "system:serviceaccount:apps:web"

// fedWorld is an emulator whose identity "wi" and app registration trust a test issuer.
type fedWorld struct {
	e      *Emulator
	is     *testIssuer
	rsaKey *rsa.PrivateKey
	ecKey  *ecdsa.PrivateKey
	mi     IdentityInfo
	appID  string
}

const fedApp = "44444444-4444-4444-4444-444444444444"

func newFedWorld(t *testing.T, mod func(*Config)) *fedWorld {
	t.Helper()
	is := newTestIssuer(t)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	is.publish(map[string]crypto.PublicKey{"rsa-1": &rk.PublicKey, "ec-1": &ek.PublicKey})
	fc := []FederatedCredentialConfig{{Name: "web", Issuer: is.URL, Subject: fedSubject}}
	e := newWorld(t, func(c *Config) {
		c.UserAssignedIdentities = append(c.UserAssignedIdentities, IdentityConfig{Name: "wi", FederatedCredentials: fc})
		c.AppRegistrations = []AppRegistrationConfig{{ClientID: fedApp, FederatedCredentials: fc}}
		c.IssuerCAs = []string{string(is.caPEM())}
		if mod != nil {
			mod(c)
		}
	})
	mi, err := e.Identity("wi")
	if err != nil {
		t.Fatal(err)
	}
	return &fedWorld{e: e, is: is, rsaKey: rk, ecKey: ek, mi: mi, appID: fedApp}
}

// claims are those of a Kubernetes service-account token for fedSubject, valid for an hour.
func (w *fedWorld) claims() jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{"iss": w.is.URL, "sub": fedSubject, "aud": []string{TokenExchangeAudience},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()}
}

// exchange asks for an ARM token with assertion through the official SDK.
func (w *fedWorld) exchange(t *testing.T, clientID, assertion string) (string, error) {
	t.Helper()
	cred, err := azidentity.NewClientAssertionCredential(w.e.Config().TenantID, clientID,
		func(context.Context) (string, error) { return assertion, nil },
		&azidentity.ClientAssertionCredentialOptions{ClientOptions: w.e.ClientOptions(), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cred.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com//.default"}})
	return tok.Token, err
}

// aadFailure extracts status, error and the first AADSTS code from an SDK authentication error.
func aadFailure(t *testing.T, err error) (int, string, int, string) {
	t.Helper()
	var af *azidentity.AuthenticationFailedError
	if !errors.As(err, &af) || af.RawResponse == nil {
		t.Fatalf("want an AuthenticationFailedError with a response, got %v", err)
	}
	b, _ := io.ReadAll(af.RawResponse.Body)
	var body aadErrorBody
	if err := json.Unmarshal(b, &body); err != nil || len(body.Codes) == 0 {
		t.Fatalf("AAD error body %s: %v", b, err)
	}
	return af.RawResponse.StatusCode, body.Error, body.Codes[0], body.Description
}

func TestFederatedExchangeForIdentityAndApp(t *testing.T) {
	w := newFedWorld(t, nil)
	for _, alg := range []string{"RS256", "ES256"} {
		var key crypto.Signer = w.rsaKey
		kid := "rsa-1"
		if alg == "ES256" {
			key, kid = w.ecKey, "ec-1"
		}
		tok, err := w.exchange(t, w.mi.ClientID, sign(t, alg, kid, key, w.claims()))
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		c, err := w.e.VerifyToken(tok)
		if err != nil {
			t.Fatal(err)
		}
		exp, _ := c.GetExpirationTime()
		if c["aud"] != "https://management.azure.com/" || c["appid"] != w.mi.ClientID || c["azp"] != w.mi.ClientID ||
			c["oid"] != w.mi.PrincipalID || c["xms_mirid"] != w.mi.ID || c["tid"] != w.e.Config().TenantID ||
			time.Until(exp.Time) < 23*time.Hour {
			t.Errorf("%s: managed identity token claims %v", alg, c)
		}
	}
	tok, err := w.exchange(t, w.appID, sign(t, "RS256", "rsa-1", w.rsaKey, w.claims()))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := w.e.VerifyToken(tok)
	exp, _ := c.GetExpirationTime()
	if c["appid"] != w.appID || c["xms_mirid"] != nil || time.Until(exp.Time) > time.Hour {
		t.Errorf("app token claims %v", c)
	}
	if n := w.e.Count(CounterKey{Service: ServiceAAD, Operation: OpAADToken, Identity: w.mi.ClientID, Subject: fedSubject, Status: 200}); n != 2 {
		t.Errorf("exchange counter for (identity, subject, 200) = %d, want 2", n)
	}
}

func TestFederatedExchangeSuccessBodyHasNumbers(t *testing.T) {
	w := newFedWorld(t, nil)
	form := "grant_type=client_credentials&client_id=" + w.mi.ClientID +
		"&scope=https%3A%2F%2Fvault.azure.net%2F.default+openid+offline_access+profile&client_info=1" +
		"&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=" +
		sign(t, "RS256", "rsa-1", w.rsaKey, w.claims())
	resp, err := w.e.HTTPClient().Post(w.e.AADURL()+"/"+w.e.Config().TenantID+"/oauth2/v2.0/token",
		"application/x-www-form-urlencoded", strings.NewReader(form))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if _, ok := body["expires_in"].(float64); !ok || resp.StatusCode != 200 {
		t.Fatalf("status %d body %v: want expires_in as a JSON number", resp.StatusCode, body)
	}
	if _, ok := body["refresh_in"].(float64); !ok {
		t.Errorf("a 24 h managed-identity token should carry refresh_in: %v", body)
	}
	c, _ := w.e.VerifyToken(body["access_token"].(string))
	if c["aud"] != "https://vault.azure.net" {
		t.Errorf("aud = %v, want the resource of the scope", c["aud"])
	}
}

// Every way an assertion fails answers as Azure AD does: HTTP status, error, AADSTS code.
func TestFederatedExchangeFailuresAnswerLikeAzureAD(t *testing.T) {
	w := newFedWorld(t, nil)
	if err := w.e.AddFederatedCredential("id2", FederatedCredentialConfig{Name: "dead", Issuer: "https://127.0.0.1:1/", Subject: fedSubject}); err != nil {
		t.Fatal(err)
	}
	if err := w.e.AddFederatedCredential("id3", FederatedCredentialConfig{Name: "remote", Issuer: "https://issuer.example/", Subject: fedSubject}); err != nil {
		t.Fatal(err)
	}
	id1, _ := w.e.Identity("id1")
	id2, _ := w.e.Identity("id2")
	id3, _ := w.e.Identity("id3")
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	with := func(mod func(jwt.MapClaims)) jwt.MapClaims { c := w.claims(); mod(c); return c }
	good := func(c jwt.MapClaims) string { return sign(t, "RS256", "rsa-1", w.rsaKey, c) }
	armCred, _ := w.e.PrincipalCredential(testApp)
	aadTok, _ := armCred.GetToken(ctx(t), policy.TokenRequestOptions{Scopes: []string{TokenExchangeAudience + "/.default"}})
	now := time.Now()
	for _, tc := range []struct {
		name, client, assertion string
		status                  int
		errCode                 string
		code                    int
		mention                 string
	}{
		{"unknown client", "55555555-5555-5555-5555-555555555555", good(w.claims()), 400, "unauthorized_client", 700016, "55555555"},
		{"issuer without its trailing slash", w.mi.ClientID, good(with(func(c jwt.MapClaims) { c["iss"] = strings.TrimSuffix(w.is.URL, "/") })), 401, "invalid_client", 700211, strings.TrimSuffix(w.is.URL, "/") + "'"},
		{"subject in another case", w.mi.ClientID, good(with(func(c jwt.MapClaims) { c["sub"] = "system:serviceaccount:apps:Web" })), 401, "invalid_client", 700213, "apps:Web"},
		{"audience", w.mi.ClientID, good(with(func(c jwt.MapClaims) { c["aud"] = []string{"api://Other"} })), 401, "invalid_client", 700212, "api://Other"},
		{"identity without credentials", id1.ClientID, good(w.claims()), 401, "invalid_client", 70021, "Assertion Subject: '" + fedSubject},
		{"issuer unreachable", id2.ClientID, good(with(func(c jwt.MapClaims) { c["iss"] = "https://127.0.0.1:1/" })), 400, "invalid_request", 90061, "127.0.0.1:1"},
		{"issuer off loopback is never fetched", id3.ClientID, good(with(func(c jwt.MapClaims) { c["iss"] = "https://issuer.example/" })), 400, "invalid_request", 90061, "loopback"},
		{"unknown kid", w.mi.ClientID, sign(t, "RS256", "rsa-2", w.rsaKey, w.claims()), 401, "invalid_client", 7000272, "'rsa-2'"},
		{"bad signature", w.mi.ClientID, sign(t, "RS256", "rsa-1", other, w.claims()), 401, "invalid_client", 700027, "signature"},
		{"expired", w.mi.ClientID, good(with(func(c jwt.MapClaims) {
			c["iat"], c["nbf"], c["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
		})), 401, "invalid_client", 700024, "expiry time of assertion " + aadTime(time.Unix(now.Add(-time.Hour).Unix(), 0))},
		{"not yet valid", w.mi.ClientID, good(with(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() })), 401, "invalid_client", 700024, "valid from " + aadTime(time.Unix(now.Add(time.Hour).Unix(), 0))},
		{"lifetime over 25 h", w.mi.ClientID, good(with(func(c jwt.MapClaims) { c["exp"] = now.Add(26 * time.Hour).Unix() })), 400, "invalid_request", 70023, "1.01:00:00"},
		{"token of this Azure AD", w.mi.ClientID, aadTok.Token, 401, "invalid_client", 700222, "AAD-issued"},
	} {
		_, err := w.exchange(t, tc.client, tc.assertion)
		if err == nil {
			t.Errorf("%s: exchange succeeded, want AADSTS%d", tc.name, tc.code)
			continue
		}
		st, e, code, desc := aadFailure(t, err)
		if st != tc.status || e != tc.errCode || code != tc.code || !strings.Contains(desc, tc.mention) {
			t.Errorf("%s: got %d %s AADSTS%d %q, want %d %s AADSTS%d mentioning %q", tc.name, st, e, code, desc, tc.status, tc.errCode, tc.code, tc.mention)
		}
	}
	if n := w.e.Count(CounterKey{Service: ServiceAAD, Identity: w.mi.ClientID, Subject: "system:serviceaccount:apps:Web", Code: 700213}); n != 1 {
		t.Errorf("counter (client, subject, 700213) = %d, want 1", n)
	}
}

func TestFederatedCredentialPropagationDelay(t *testing.T) {
	w := newFedWorld(t, func(c *Config) { c.Timing.FICPropagation = D(300 * time.Millisecond) })
	// World-file credentials exist from the start; one created now is not usable yet.
	if _, err := w.exchange(t, w.mi.ClientID, sign(t, "RS256", "rsa-1", w.rsaKey, w.claims())); err != nil {
		t.Fatalf("preloaded credential: %v", err)
	}
	if err := w.e.AddFederatedCredential("id1", FederatedCredentialConfig{Name: "new", Issuer: w.is.URL, Subject: fedSubject}); err != nil {
		t.Fatal(err)
	}
	id1, _ := w.e.Identity("id1")
	_, err := w.exchange(t, id1.ClientID, sign(t, "RS256", "rsa-1", w.rsaKey, w.claims()))
	if err == nil {
		t.Fatal("a credential created just now was usable before the propagation delay")
	}
	if st, _, code, _ := aadFailure(t, err); st != 401 || code != 70021 {
		t.Fatalf("during propagation: %d AADSTS%d, want 401 AADSTS70021", st, code)
	}
	time.Sleep(350 * time.Millisecond)
	if _, err := w.exchange(t, id1.ClientID, sign(t, "RS256", "rsa-1", w.rsaKey, w.claims())); err != nil {
		t.Fatalf("after propagation: %v", err)
	}
}

// With a key cache, a rotated issuer key is unknown until the cache expires (7000272).
func TestIssuerKeyCacheAndRotation(t *testing.T) {
	w := newFedWorld(t, func(c *Config) { c.Timing.IssuerKeyCache = D(time.Hour) })
	for range 2 {
		if _, err := w.exchange(t, w.mi.ClientID, sign(t, "RS256", "rsa-1", w.rsaKey, w.claims())); err != nil {
			t.Fatal(err)
		}
	}
	if w.is.hits != 1 {
		t.Errorf("discovery fetched %d times for two exchanges with a 1 h cache, want 1", w.is.hits)
	}
	next, _ := rsa.GenerateKey(rand.Reader, 2048)
	w.is.publish(map[string]crypto.PublicKey{"rsa-2": &next.PublicKey})
	_, err := w.exchange(t, w.mi.ClientID, sign(t, "RS256", "rsa-2", next, w.claims()))
	if err == nil {
		t.Fatal("a key published after the cache was filled was accepted")
	}
	if _, _, code, _ := aadFailure(t, err); code != 7000272 {
		t.Fatalf("stale cache: AADSTS%d, want 7000272", code)
	}
	w.e.FlushIssuerKeys()
	if _, err := w.exchange(t, w.mi.ClientID, sign(t, "RS256", "rsa-2", next, w.claims())); err != nil {
		t.Fatalf("after the cache expired: %v", err)
	}
}

func TestFederatedExchangeFaults(t *testing.T) {
	w := newFedWorld(t, nil)
	w.e.AddFault(Fault{Service: ServiceAAD, Operation: OpAADToken, Count: 1, Status: 429, RetryAfter: D(2 * time.Second)})
	form := "grant_type=client_credentials&client_id=" + w.mi.ClientID + "&scope=https%3A%2F%2Fmanagement.azure.com%2F.default" +
		"&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=" +
		sign(t, "RS256", "rsa-1", w.rsaKey, w.claims())
	post := func() *http.Response {
		resp, err := w.e.HTTPClient().Post(w.e.AADURL()+"/"+w.e.Config().TenantID+"/oauth2/v2.0/token",
			"application/x-www-form-urlencoded", strings.NewReader(form))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp
	}
	if r := post(); r.StatusCode != 429 || r.Header.Get("Retry-After") != "2" {
		t.Errorf("injected fault: %d Retry-After %q, want 429 and 2", r.StatusCode, r.Header.Get("Retry-After"))
	}
	if r := post(); r.StatusCode != 200 {
		t.Errorf("after the fault: %d, want 200", r.StatusCode)
	}
}

// The v1 endpoint takes resource instead of scope and answers v1's string-valued shape; a
// missing client_assertion_type is AADSTS900144.
func TestFederatedExchangeV1AndMissingAssertionType(t *testing.T) {
	w := newFedWorld(t, nil)
	as := sign(t, "RS256", "rsa-1", w.rsaKey, w.claims())
	post := func(path string, form url.Values) (int, map[string]any) {
		resp, err := w.e.HTTPClient().PostForm(w.e.AADURL()+"/"+w.e.Config().TenantID+path, form)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	st, body := post("/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {w.mi.ClientID},
		"resource": {"https://management.azure.com/"}, "client_assertion": {as},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}})
	if st != 200 || body["resource"] != "https://management.azure.com/" || body["access_token"] == nil {
		t.Errorf("v1 exchange: %d %v", st, body)
	}
	st, body = post("/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {w.mi.ClientID},
		"scope": {"https://management.azure.com/.default"}, "client_assertion": {as}})
	if codes, _ := body["error_codes"].([]any); st != 400 || len(codes) != 1 || codes[0] != float64(900144) {
		t.Errorf("without client_assertion_type: %d %v", st, body)
	}
}
