package nmi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/go-logr/logr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// FederatedSource gets tokens by workload identity federation: a ServiceAccount token minted
// with the TokenRequest API (saTokens) is the client assertion of an Azure AD
// client-credentials request. Azure AD decides whether the ServiceAccount may use the identity
// (its federated credentials); NMI's bindings decide first.
type FederatedSource struct {
	tokens *saTokens
	// ClientOptions carries the transport (e.g. a CA to trust) for Azure AD.
	clientOptions azcore.ClientOptions
	// authority and tenant resolve an identity's Azure AD authority and tenant (Server's rules).
	authority func(*aadv1.AzureIdentity) string
	tenant    func(*aadv1.AzureIdentity) string
	log       logr.Logger
}

// subjectSource is the TokenSource of one federated subject: the cache keys tokens per
// ServiceAccount, and each fetch presents a token of that ServiceAccount.
type subjectSource struct {
	src  *FederatedSource
	subj fedSubject
}

func (s *subjectSource) Fetch(ctx context.Context, id *aadv1.AzureIdentity, resource string) ([]Token, error) {
	return s.src.fetch(ctx, id, resource, s.subj)
}

// noMatchCodes are Azure AD's "no matching federated identity record" codes: generic, and by
// issuer, audience and subject. Right after a credential is created they mean propagation.
var noMatchCodes = []int{70021, 700211, 700212, 700213}

func (f *FederatedSource) fetch(ctx context.Context, id *aadv1.AzureIdentity, resource string, subj fedSubject) ([]Token, error) {
	fed := id.Spec.Federation
	aud := fed.AudienceOrDefault()
	sat, err := f.tokens.get(ctx, subj, aud, fed.ExpirationSecondsOrDefault())
	if err != nil {
		return nil, err
	}
	opts := f.clientOptions
	opts.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: f.authority(id)}
	// Our cache does the retrying; the SDK's retries would hold a request far beyond its budget.
	opts.Retry = policy.RetryOptions{MaxRetries: -1}
	tenant := f.tenant(id)
	cred, err := azidentity.NewClientAssertionCredential(tenant, id.Spec.ClientID,
		func(context.Context) (string, error) { return sat.token, nil },
		&azidentity.ClientAssertionCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		return nil, fmt.Errorf("%w: AzureIdentity %s/%s: %v", ErrCredential, id.Namespace, id.Name, err)
	}
	at, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scopeOf(resource)}})
	if err != nil {
		return nil, f.exchangeError(err, id, tenant, subj, aud, sat.issuer)
	}
	tok := Token{AccessToken: at.Token, ExpiresOn: at.ExpiresOn, NotBefore: time.Now(), Resource: resource,
		TokenType: "Bearer", ClientID: id.Spec.ClientID, ObjectID: objectIDOf(at.Token)}
	if id.Spec.Type == aadv1.UserAssignedMSI {
		// As for IMDS: the token must be for the identity's resource and client IDs.
		if err := verifyManagedIdentity(tok, id, "Azure AD"); err != nil {
			return nil, err
		}
	}
	return []Token{tok}, nil
}

// aadErrorBody is Azure AD's error envelope (the fields NMI reads).
type aadErrorBody struct {
	Error         string `json:"error"`
	Description   string `json:"error_description"`
	Codes         []int  `json:"error_codes"`
	TraceID       string `json:"trace_id"`
	CorrelationID string `json:"correlation_id"`
}

// exchangeError classifies a failed exchange: "no matching federated credential" becomes a
// NoFederatedCredentialError (the server decides between propagation and a missing credential);
// other Azure AD answers map as service principals' do. Codes and IDs are logged for support.
func (f *FederatedSource) exchangeError(err error, id *aadv1.AzureIdentity, tenant string, subj fedSubject, aud, issuer string) error {
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) || afe.RawResponse == nil {
		return &UpstreamError{Service: "aad", Code: "aad_unavailable",
			Description: fmt.Sprintf("exchanging the ServiceAccount token of %s for AzureIdentity %s/%s in tenant %s: %s", subj.subjectString(), id.Namespace, id.Name, tenant, firstLine(err.Error()))}
	}
	var body aadErrorBody
	if afe.RawResponse.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(afe.RawResponse.Body, 64<<10))
		_ = json.Unmarshal(b, &body)
	}
	code := 0
	if len(body.Codes) > 0 {
		code = body.Codes[0]
	}
	// V(1): every refusal also reaches the pod's answer and the sampled refusal log, codes included.
	f.log.V(1).Info("Azure AD refused a federated token exchange", "identity", id.Namespace+"/"+id.Name, "clientID", id.Spec.ClientID,
		"subject", subj.subjectString(), "status", afe.RawResponse.StatusCode, "error", imdsreq.Clip(body.Error), "aadsts", code,
		"traceID", imdsreq.Clip(body.TraceID), "correlationID", imdsreq.Clip(body.CorrelationID))
	if slices.Contains(noMatchCodes, code) {
		return &NoFederatedCredentialError{Identity: id, Issuer: issuer, Subject: subj.subjectString(), Audience: aud, Code: code,
			TraceID: imdsreq.Clip(body.TraceID), CorrelationID: imdsreq.Clip(body.CorrelationID)}
	}
	desc := firstLine(err.Error())
	if code != 0 {
		desc = fmt.Sprintf("AADSTS%d: %s", code, firstLine(body.Description))
	}
	return &UpstreamError{Service: "aad", Status: afe.RawResponse.StatusCode, Code: "aad_error",
		Description: fmt.Sprintf("Azure AD refused the federated token of %s for client %s of AzureIdentity %s/%s in tenant %s: %s (trace ID %s, correlation ID %s)",
			subj.subjectString(), id.Spec.ClientID, id.Namespace, id.Name, tenant, desc, imdsreq.Clip(body.TraceID), imdsreq.Clip(body.CorrelationID))}
}
