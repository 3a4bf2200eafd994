package nmi

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

var (
	// ErrNoFederatedCredential: Azure AD has no federated credential on the identity for the
	// presented issuer, subject and audience. Retrying does not help; the credential must exist.
	ErrNoFederatedCredential = errors.New("no matching federated identity credential")
	// ErrFederationPropagating: Azure AD has no matching credential yet, but the identity, binding
	// or pod is new: a credential created just now takes a while to be seen (503, Retry-After).
	ErrFederationPropagating = errors.New("federated credential not visible yet")
)

// NoFederatedCredentialError is Azure AD's AADSTS70021/700211/700212/700213 for a federated
// exchange, with what the fix needs.
type NoFederatedCredentialError struct {
	Identity                  *aadv1.AzureIdentity
	Issuer, Subject, Audience string
	Code                      int
	TraceID, CorrelationID    string
}

func (e *NoFederatedCredentialError) Error() string {
	id := e.Identity
	iss := e.Issuer
	if iss == "" {
		iss = "<the cluster's OIDC issuer URL>"
	}
	return fmt.Sprintf("Azure AD has no federated identity credential on client %s (AzureIdentity %s/%s) for issuer %q, subject %q, audience %q (AADSTS%d, trace ID %s, correlation ID %s): create it with: %s",
		id.Spec.ClientID, id.Namespace, id.Name, iss, e.Subject, e.Audience, e.Code, e.TraceID, e.CorrelationID, e.FixCommand())
}

func (e *NoFederatedCredentialError) Unwrap() error { return ErrNoFederatedCredential }

// credentialName is a federated credential name for the subject: letters, digits, '-' and '_'
// (Azure's rule), at most 120 characters.
var nameUnsafe = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// FixCommand is the az command that creates the missing credential.
func (e *NoFederatedCredentialError) FixCommand() string {
	iss := e.Issuer
	if iss == "" {
		iss = "<issuer>"
	}
	name := nameUnsafe.ReplaceAllString(strings.TrimPrefix(e.Subject, "system:serviceaccount:"), "-")
	if len(name) > 120 {
		name = name[:120]
	}
	id := e.Identity
	if id.Spec.Type == aadv1.UserAssignedMSI {
		uami, rg := "<identity-name>", "<resource-group>"
		if r, err := arm.ParseResourceID(id.Spec.ResourceID); err == nil {
			uami, rg = r.Name, r.ResourceGroupName
		}
		return fmt.Sprintf("az identity federated-credential create --name %s --identity-name %s --resource-group %s --issuer %s --subject %s --audience %s",
			name, uami, rg, iss, e.Subject, e.Audience)
	}
	return fmt.Sprintf(`az ad app federated-credential create --id %s --parameters '{"name":"%s","issuer":"%s","subject":"%s","audiences":["%s"]}'`,
		id.Spec.ClientID, name, iss, e.Subject, e.Audience)
}

// propagationError is a no-match answer within --federation-propagation-window of the newest of
// the identity, its bindings and the pod: the credential may just have been created.
type propagationError struct {
	cause  *NoFederatedCredentialError
	newest time.Time
	window time.Duration
}

func (e *propagationError) Error() string {
	return fmt.Sprintf("Azure AD does not match a federated credential yet for subject %q on client %s (AzureIdentity %s/%s, AADSTS%d, trace ID %s, correlation ID %s); the identity, binding or pod was created %s ago, and a new credential takes up to %s to be seen: retry. If it persists: %s",
		e.cause.Subject, e.cause.Identity.Spec.ClientID, e.cause.Identity.Namespace, e.cause.Identity.Name, e.cause.Code, e.cause.TraceID, e.cause.CorrelationID,
		time.Since(e.newest).Round(time.Second), e.window, e.cause.FixCommand())
}

func (e *propagationError) Unwrap() error { return ErrFederationPropagating }

// federationWindow turns a no-match answer for a new identity, binding or pod into a
// propagation error; older ones stay a missing credential.
func (s *Server) federationWindow(err error, pod *podInfo, g *grant) error {
	var nf *NoFederatedCredentialError
	if !errors.As(err, &nf) || g == nil || g.id == nil || s.cfg.FederationPropagationWindow <= 0 {
		return err
	}
	newest := g.id.CreationTimestamp.Time
	for _, b := range g.bindings {
		if t := b.CreationTimestamp.Time; t.After(newest) {
			newest = t
		}
	}
	if pod != nil && pod.Created.After(newest) {
		newest = pod.Created
	}
	if time.Since(newest) < s.cfg.FederationPropagationWindow {
		return &propagationError{cause: nf, newest: newest, window: s.cfg.FederationPropagationWindow}
	}
	return err
}
