package controlplane

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// LegacyIssuer is the in-cluster issuer name the sandbox used before it published its issuer;
// the apiserver still accepts tokens that carry it.
const LegacyIssuer = "https://kubernetes.default.svc.cluster.local"

// IssuerDiscoveryBinding names the ClusterRoleBinding that lets anonymous clients read discovery.
const IssuerDiscoveryBinding = "podidentity-sandbox-issuer-discovery"

// IssuerURL is the service-account issuer of a sandbox apiserver on port: its own HTTPS URL, so
// that an external verifier (the emulator's Azure AD) can fetch discovery and keys, as from
// AKS's OIDC issuer.
func IssuerURL(port int) string { return "https://127.0.0.1:" + strconv.Itoa(port) }

// Anonymous requests are authenticated only on the two issuer paths; every other path needs
// credentials, as with --anonymous-auth=false.
const authenticationConfig = `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
anonymous:
  enabled: true
  conditions:
  - path: /.well-known/openid-configuration
  - path: /openid/v1/jwks
`

// issuerFlags writes the authentication configuration into dir and returns the kube-apiserver
// flags that publish the issuer.
func issuerFlags(dir string, port int) ([]string, error) {
	path := filepath.Join(dir, "authentication-config.yaml")
	if err := os.WriteFile(path, []byte(authenticationConfig), 0o600); err != nil {
		return nil, fmt.Errorf("writing the apiserver authentication configuration: %w", err)
	}
	iss := IssuerURL(port)
	return []string{
		// The first issuer signs; the second is still accepted.
		"--service-account-issuer=" + iss, "--service-account-issuer=" + LegacyIssuer,
		"--service-account-jwks-uri=" + iss + "/openid/v1/jwks",
		// Tokens for the apiserver keep working whichever issuer name they were requested for.
		"--api-audiences=" + iss + "," + LegacyIssuer,
		"--authentication-config=" + path,
	}, nil
}

// publishIssuer binds system:service-account-issuer-discovery to system:unauthenticated: by
// default only service accounts may read the issuer documents.
func publishIssuer(ctx context.Context, cfg *rest.Config) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("clientset: %w", err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: IssuerDiscoveryBinding},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:unauthenticated"}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("binding issuer discovery for anonymous clients: %w", err)
	}
	return nil
}
