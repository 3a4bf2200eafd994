package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podidentity/podidentity/internal/emulator"
)

// The sandbox is ready for federation as an AKS cluster with its OIDC issuer is: the emulated
// Azure AD fetches the sandbox apiserver's issuer discovery over HTTPS and exchanges a
// ServiceAccount token the apiserver signed for an access token of the identity whose federated
// credential names that ServiceAccount; another ServiceAccount's token is refused (AADSTS70021).
func TestSandboxServiceAccountTokenExchangesForAnIdentity(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	ctx := ctxFor(t)
	info := azureIdentity(t, "federated")
	if err := sb.Emulator.AddFederatedCredential(info.Name, emulator.FederatedCredentialConfig{
		Name: "web", Issuer: sb.Issuer, Subject: "system:serviceaccount:" + ns + ":web"}); err != nil {
		t.Fatal(err)
	}
	tokenOf := func(sa string) string {
		if _, err := sb.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := sb.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{emulator.TokenExchangeAudience}, ExpirationSeconds: ptr.To(int64(3600))}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenRequest for %s: %v", sa, err)
		}
		return tr.Status.Token
	}
	exchange := func(assertion string) (string, error) {
		c, err := azidentity.NewClientAssertionCredential(sb.Emulator.Config().TenantID, info.ClientID,
			func(context.Context) (string, error) { return assertion, nil },
			&azidentity.ClientAssertionCredentialOptions{ClientOptions: sb.Emulator.ClientOptions(), DisableInstanceDiscovery: true})
		if err != nil {
			return "", err
		}
		at, err := c.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{"https://management.azure.com//.default"}})
		return at.Token, err
	}
	web, other := tokenOf("web"), tokenOf("other")
	// A new credential may answer AADSTS70021 for the emulator's propagation delay; anything
	// else fails at once.
	var tok string
	waitFor(t, "the federated exchange of the web ServiceAccount's token", func(context.Context) (bool, error) {
		var err error
		if tok, err = exchange(web); err != nil && !strings.Contains(err.Error(), "AADSTS70021") {
			t.Fatalf("exchanging the web ServiceAccount's token: %v", err)
		}
		return err == nil, err
	})
	c, err := sb.Emulator.VerifyToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c["xms_mirid"] != info.ID || c["appid"] != info.ClientID {
		t.Errorf("token for %v (%v), want %s (%s)", c["xms_mirid"], c["appid"], info.ID, info.ClientID)
	}
	if _, err := exchange(other); err == nil || !strings.Contains(err.Error(), "AADSTS70021") {
		t.Errorf("another ServiceAccount's token: want AADSTS70021, got %v", err)
	}
}
