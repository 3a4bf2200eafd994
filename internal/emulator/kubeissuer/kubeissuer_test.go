// Package kubeissuer_test proves the emulator's Azure AD against a real kube-apiserver: tokens
// from the TokenRequest API, issuer discovery and JWKS fetched over HTTPS, the official SDK.
package kubeissuer_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

type world struct {
	e   *emulator.Emulator
	iss testenv.Issuer
	ns  string
	mi  emulator.IdentityInfo
}

// newWorld starts an emulator whose identity "wi" trusts the test apiserver's issuer for the
// ServiceAccount <ns>/web; trust says whether it trusts the apiserver's CA.
func newWorld(t *testing.T, trust bool) *world {
	t.Helper()
	ctx := testenv.Context(t)
	iss, err := env.PublishIssuer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t)
	sub := "system:serviceaccount:" + ns + ":web"
	e, err := emulator.New(emulator.Config{
		UserAssignedIdentities: []emulator.IdentityConfig{
			{Name: "wi", FederatedCredentials: []emulator.FederatedCredentialConfig{{Name: "web", Issuer: iss.URL, Subject: sub}}},
			{Name: "noslash", FederatedCredentials: []emulator.FederatedCredentialConfig{{Name: "web", Issuer: strings.TrimSuffix(iss.URL, "/"), Subject: sub}}},
		},
		Timing: emulator.FastTiming(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if trust {
		if err := e.TrustIssuerCA(iss.CAPEM); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	mi, _ := e.Identity("wi")
	return &world{e: e, iss: iss, ns: ns, mi: mi}
}

func (w *world) token(t *testing.T, sa string, audiences ...string) string {
	t.Helper()
	tok, err := env.ServiceAccountToken(testenv.Context(t), w.ns, sa, audiences, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (w *world) assertionCred(t *testing.T, clientID, assertion string) azcore.TokenCredential {
	t.Helper()
	c, err := azidentity.NewClientAssertionCredential(w.e.Config().TenantID, clientID,
		func(context.Context) (string, error) { return assertion, nil },
		&azidentity.ClientAssertionCredentialOptions{ClientOptions: w.e.ClientOptions(), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func armToken(t *testing.T, c azcore.TokenCredential) (azcore.AccessToken, error) {
	t.Helper()
	return c.GetToken(testenv.Context(t), policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com//.default"}})
}

func aadCode(t *testing.T, err error) (int, string, int) {
	t.Helper()
	var af *azidentity.AuthenticationFailedError
	if !errors.As(err, &af) || af.RawResponse == nil {
		t.Fatalf("want an Azure AD error answer, got %v", err)
	}
	b, _ := io.ReadAll(af.RawResponse.Body)
	var body struct {
		Error string `json:"error"`
		Codes []int  `json:"error_codes"`
	}
	if err := json.Unmarshal(b, &body); err != nil || len(body.Codes) == 0 {
		t.Fatalf("Azure AD error body %s: %v", b, err)
	}
	return af.RawResponse.StatusCode, body.Error, body.Codes[0]
}

// The official SDK's WorkloadIdentityCredential exchanges a token the real apiserver signed.
func TestWorkloadIdentityCredentialExchangesAnApiserverToken(t *testing.T) {
	w := newWorld(t, true)
	if !strings.HasPrefix(w.iss.URL, "https://127.0.0.1:") || !strings.HasPrefix(w.iss.JWKSURI, "https://") {
		t.Fatalf("issuer %q, jwks_uri %q: want HTTPS on loopback", w.iss.URL, w.iss.JWKSURI)
	}
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(w.token(t, "web", emulator.TokenExchangeAudience)), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
		ClientOptions: w.e.ClientOptions(), DisableInstanceDiscovery: true,
		ClientID: w.mi.ClientID, TenantID: w.e.Config().TenantID, TokenFilePath: file})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := armToken(t, cred)
	if err != nil {
		t.Fatal(err)
	}
	c, err := w.e.VerifyToken(tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	if c["aud"] != "https://management.azure.com/" || c["appid"] != w.mi.ClientID || c["oid"] != w.mi.PrincipalID || c["xms_mirid"] != w.mi.ID {
		t.Errorf("access token claims %v", c)
	}
	sub := "system:serviceaccount:" + w.ns + ":web"
	if n := w.e.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Identity: w.mi.ClientID, Subject: sub, Status: 200}); n != 1 {
		t.Errorf("exchanges counted for (%s, %s) = %d, want 1", w.mi.ClientID, sub, n)
	}
}

// Real apiserver tokens that do not fit answer as Azure AD does.
func TestApiserverTokensThatDoNotMatch(t *testing.T) {
	w := newWorld(t, true)
	good := w.token(t, "web", emulator.TokenExchangeAudience)
	noslash, _ := w.e.Identity("noslash")
	parts := strings.Split(good, ".")
	sig := []byte(parts[2])
	// Another base64url character, so the token still parses and only the signature is wrong
	// (flipping a bit could turn '-' or '_' into a character outside the alphabet: flaky).
	if sig[10] == 'A' {
		sig[10] = 'B'
	} else {
		sig[10] = 'A'
	}
	tampered := parts[0] + "." + parts[1] + "." + string(sig)
	for _, tc := range []struct {
		name, client, assertion string
		status                  int
		code                    int
	}{
		{"another service account", w.mi.ClientID, w.token(t, "other", emulator.TokenExchangeAudience), 401, 700213},
		{"the apiserver's own audience", w.mi.ClientID, w.token(t, "web"), 401, 700212},
		{"credential issuer without the trailing slash", noslash.ClientID, good, 401, 700211},
		{"bad signature", w.mi.ClientID, tampered, 401, 700027},
	} {
		_, err := armToken(t, w.assertionCred(t, tc.client, tc.assertion))
		if err == nil {
			t.Errorf("%s: exchanged, want AADSTS%d", tc.name, tc.code)
			continue
		}
		if st, e, code := aadCode(t, err); st != tc.status || code != tc.code || e != "invalid_client" {
			t.Errorf("%s: %d %s AADSTS%d, want %d invalid_client AADSTS%d", tc.name, st, e, code, tc.status, tc.code)
		}
	}
}

// An emulator that does not trust the apiserver's CA cannot fetch its discovery document (90061).
func TestUntrustedIssuerIsUnreachable(t *testing.T) {
	w := newWorld(t, false)
	_, err := armToken(t, w.assertionCred(t, w.mi.ClientID, w.token(t, "web", emulator.TokenExchangeAudience)))
	if err == nil {
		t.Fatal("exchanged without trusting the issuer's CA")
	}
	if st, e, code := aadCode(t, err); st != 400 || e != "invalid_request" || code != 90061 {
		t.Errorf("%d %s AADSTS%d, want 400 invalid_request AADSTS90061", st, e, code)
	}
}
