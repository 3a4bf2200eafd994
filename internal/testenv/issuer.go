package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// IssuerDiscoveryBinding names the ClusterRoleBinding PublishIssuer creates.
const IssuerDiscoveryBinding = "podidentity-testenv-issuer-discovery"

// Issuer is the test apiserver's service-account token issuer as external verifiers see it.
type Issuer struct {
	// URL is the iss of the tokens the apiserver signs (https://127.0.0.1:<port>/ under envtest).
	URL string
	// JWKSURI is where the discovery document says the keys are.
	JWKSURI string
	// CAPEM is the CA that signed the apiserver's serving certificate: verifiers must trust it.
	CAPEM []byte
}

// PublishIssuer makes the issuer's discovery document and JWKS readable without credentials, as
// AKS's OIDC issuer is, by binding system:service-account-issuer-discovery to
// system:unauthenticated, and returns the issuer. It only adds that one binding, and may be
// called by several tests.
func (e *Env) PublishIssuer(ctx context.Context) (Issuer, error) {
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: IssuerDiscoveryBinding},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:unauthenticated"}},
	}
	if err := e.Client.Create(ctx, crb); err != nil && !apierrors.IsAlreadyExists(err) {
		return Issuer{}, fmt.Errorf("binding issuer discovery for anonymous clients: %w", err)
	}
	// Read the discovery document anonymously, as a verifier does; RBAC takes a moment to see the binding.
	anon := rest.AnonymousClientConfig(e.Config)
	hc, err := rest.HTTPClientFor(anon)
	if err != nil {
		return Issuer{}, fmt.Errorf("anonymous client for the test apiserver: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	var last error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if last = getDiscovery(ctx, hc, strings.TrimSuffix(e.Config.Host, "/")+"/.well-known/openid-configuration", &doc); last == nil {
			return Issuer{URL: doc.Issuer, JWKSURI: doc.JWKSURI, CAPEM: append([]byte(nil), e.Config.CAData...)}, nil
		}
	}
	return Issuer{}, fmt.Errorf("reading the issuer discovery document anonymously: %w", last)
}

func getDiscovery(ctx context.Context, hc *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d: %s", url, resp.StatusCode, b)
	}
	return json.Unmarshal(b, v)
}

// ServiceAccountToken creates the ServiceAccount ns/name when missing and returns a token for it
// from the TokenRequest API, with these audiences and lifetime (at least 10 minutes).
func (e *Env) ServiceAccountToken(ctx context.Context, ns, name string, audiences []string, ttl time.Duration) (string, error) {
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return "", fmt.Errorf("clientset: %w", err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("creating service account %s/%s: %w", ns, name, err)
	}
	secs := int64(ttl.Seconds())
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs}}
	out, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("TokenRequest for %s/%s: %w", ns, name, err)
	}
	return out.Status.Token, nil
}

// publishJWKSOnLoopback pins the apiserver's secure port and makes its discovery document name
// jwks_uri on that loopback URL: by default the apiserver derives it from its advertised address,
// a host interface the emulator's Azure AD does not (and must not) fetch from.
func publishJWKSOnLoopback(e *envtest.Environment) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("finding a free port for kube-apiserver: %w", err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	_ = ln.Close()
	api := e.ControlPlane.GetAPIServer()
	api.SecureServing.Address, api.SecureServing.Port = "127.0.0.1", port
	api.Configure().Set("service-account-jwks-uri", "https://127.0.0.1:"+port+"/openid/v1/jwks")
	return nil
}
