package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

func TestIssuerFlagsPublishTheApiserversOwnURL(t *testing.T) {
	dir := t.TempDir()
	flags, err := issuerFlags(dir, 6443)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(flags, " ")
	for _, want := range []string{"--service-account-issuer=https://127.0.0.1:6443 ", "--service-account-issuer=" + LegacyIssuer,
		"--service-account-jwks-uri=https://127.0.0.1:6443/openid/v1/jwks", "--authentication-config=" + filepath.Join(dir, "authentication-config.yaml")} {
		if !strings.Contains(got+" ", want) {
			t.Errorf("flags %q lack %q", got, want)
		}
	}
	if strings.Index(got, "issuer=https://127.0.0.1") > strings.Index(got, "issuer="+LegacyIssuer) {
		t.Errorf("the published issuer must come first (it signs): %s", got)
	}
}

// The sandbox apiserver publishes its issuer like AKS: discovery and JWKS over HTTPS without
// credentials, nothing else anonymous, and the emulator's Azure AD exchanges its tokens.
func TestSandboxApiserverPublishesItsIssuer(t *testing.T) {
	bin, err := testenv.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cp, err := Start(ctx, Options{BinDir: bin, Dir: dir, LogDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CAPEM)
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	get := func(url string, v any) int {
		resp, err := anon.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if v != nil {
			_ = json.NewDecoder(resp.Body).Decode(v)
		}
		return resp.StatusCode
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if st := get(cp.Issuer+"/.well-known/openid-configuration", &doc); st != 200 || doc.Issuer != cp.Issuer || doc.JWKSURI != cp.Issuer+"/openid/v1/jwks" {
		t.Fatalf("anonymous discovery: %d %+v", st, doc)
	}
	if st := get(doc.JWKSURI, nil); st != 200 {
		t.Errorf("anonymous JWKS: %d", st)
	}
	for _, p := range []string{"/api", "/version", "/readyz"} {
		if st := get(cp.Config.Host+p, nil); st != 401 {
			t.Errorf("anonymous GET %s: %d, want 401 (anonymous only on the issuer paths)", p, st)
		}
	}

	cs := kubernetes.NewForConfigOrDie(cp.Config)
	if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := func(aud ...string) string {
		secs := int64(3600)
		tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, "web",
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: aud, ExpirationSeconds: &secs}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	// A token for the apiserver itself still authenticates (RBAC then forbids: 403, not 401).
	req, _ := http.NewRequest(http.MethodGet, cp.Config.Host+"/api/v1/namespaces/default/secrets", nil)
	req.Header.Set("Authorization", "Bearer "+token())
	if resp, err := anon.Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("service-account token for the apiserver: %v %v, want 403", resp, err)
	}

	e, err := emulator.New(emulator.Config{UserAssignedIdentities: []emulator.IdentityConfig{{Name: "wi",
		FederatedCredentials: []emulator.FederatedCredentialConfig{{Name: "web", Issuer: cp.Issuer, Subject: "system:serviceaccount:default:web"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.TrustIssuerCA(cp.CAPEM); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	mi, _ := e.Identity("wi")
	assertion := token(emulator.TokenExchangeAudience)
	cred, err := azidentity.NewClientAssertionCredential(e.Config().TenantID, mi.ClientID,
		func(context.Context) (string, error) { return assertion, nil },
		&azidentity.ClientAssertionCredentialOptions{ClientOptions: e.ClientOptions(), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com//.default"}}); err != nil {
		t.Fatalf("exchanging a sandbox service-account token: %v", err)
	}
}
