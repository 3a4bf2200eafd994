package nmi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// Token is one access token as NMI hands it out.
type Token struct {
	AccessToken string
	ExpiresOn   time.Time
	NotBefore   time.Time
	Resource    string
	TokenType   string
	ClientID    string
	// ObjectID is the principal's object ID read from the token, when present: it lets requests
	// that select an identity by object_id be matched.
	ObjectID string
}

// TokenSource gets fresh tokens for one identity from Azure. The result has one token, or one per
// tenant (primary first) for a service principal with auxiliary tenants. Implementations are the
// IMDS source (type 0), the Azure AD sources (types 1 and 2) and the federated source (a
// subjectSource per ServiceAccount, federated.go).
type TokenSource interface {
	Fetch(ctx context.Context, id *aadv1.AzureIdentity, resource string) ([]Token, error)
}

// IMDSClient calls the node's Instance Metadata Service for managed-identity tokens, over a
// shared transport that reuses connections and caps concurrency at IMDS's per-VM limit.
type IMDSClient struct {
	base   string // http://ip:port
	client *http.Client
}

// NewIMDSClient returns a client for IMDS at ip:port whose transport allows at most maxConcurrent
// requests in flight.
func NewIMDSClient(ip string, port int, maxConcurrent int) *IMDSClient {
	return &IMDSClient{base: "http://" + net.JoinHostPort(ip, strconv.Itoa(port)), client: &http.Client{
		Transport: newIMDSTransport(maxConcurrent),
		// IMDS never redirects; following one could send a token request elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// newIMDSTransport keeps enough idle connections for the concurrency cap so that sustained load
// never churns TCP connections (upstream filled the port range with TIME_WAIT).
func newIMDSTransport(maxConcurrent int) http.RoundTripper {
	if maxConcurrent <= 0 {
		maxConcurrent = 5
	}
	t := &http.Transport{
		Proxy:               nil, // IMDS is link-local: never through an HTTP proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4 * maxConcurrent,
		MaxIdleConnsPerHost: 4 * maxConcurrent,
		IdleConnTimeout:     90 * time.Second,
	}
	return &limitedTransport{next: t, sem: make(chan struct{}, maxConcurrent)}
}

// limitedTransport caps requests in flight: IMDS allows 5 concurrent identity requests per VM
// and answers 429 above that.
type limitedTransport struct {
	next http.RoundTripper
	sem  chan struct{}
	// wait, when set, bounds the wait for a slot: RoundTrip then fails with busy.
	wait time.Duration
	busy error
}

func (t *limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var timeout <-chan time.Time
	if t.wait > 0 {
		timer := time.NewTimer(t.wait)
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case t.sem <- struct{}{}:
	case <-timeout:
		return nil, t.busy
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		<-t.sem
		return nil, err
	}
	// Hold the slot until the body is consumed: that is when IMDS is done with the request.
	resp.Body = &releaseBody{ReadCloser: resp.Body, release: func() { <-t.sem }}
	return resp, nil
}

type releaseBody struct {
	io.ReadCloser
	release func()
	done    bool
}

func (b *releaseBody) Close() error {
	err := b.ReadCloser.Close()
	if !b.done {
		b.done = true
		b.release()
	}
	return err
}

// imdsAPIVersion is the token API version NMI uses towards IMDS.
const imdsAPIVersion = "2018-02-01"

// Fetch gets a token for a user-assigned identity. IMDS is asked by the identity's resource ID,
// which is what MIC assigned, and the token must show that resource ID and the identity's client
// ID: otherwise an AzureIdentity could pair an assignable resource ID with another identity's
// client ID and receive that identity's tokens.
func (c *IMDSClient) Fetch(ctx context.Context, id *aadv1.AzureIdentity, resource string) ([]Token, error) {
	if id == nil || id.Spec.ResourceID == "" || id.Spec.ClientID == "" {
		return nil, fmt.Errorf("%w: a user-assigned identity needs spec.resourceID and spec.clientID: set both to the identity's values (az identity show)", ErrCredential)
	}
	q := "api-version=" + imdsAPIVersion + "&resource=" + url.QueryEscape(resource)
	q += "&msi_res_id=" + url.QueryEscape(id.Spec.ResourceID)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metadata/identity/oauth2/token?"+q, nil)
	if err != nil {
		return nil, fmt.Errorf("building IMDS request: %w", err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, &UpstreamError{Service: "imds", Description: fmt.Sprintf("calling IMDS at %s: %v; check --metadata-ip/--metadata-port and that IMDS is reachable from the node", c.base, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, &UpstreamError{Service: "imds", Description: fmt.Sprintf("reading IMDS answer: %v", err)}
	}
	return imdsAnswer(resp.StatusCode, resp.Header.Get("Retry-After"), body, id, resource)
}

// imdsAnswer turns IMDS's answer into the identity's token or an error (pure, fuzzed): an error
// answer keeps IMDS's code, description and Retry-After; a token must be for the identity.
func imdsAnswer(status int, retryAfter string, body []byte, id *aadv1.AzureIdentity, resource string) ([]Token, error) {
	if status != http.StatusOK {
		ue := &UpstreamError{Service: "imds", Status: status}
		var eb struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &eb)
		ue.Code, ue.Description = imdsreq.Clip(eb.Error), string(clipBytes([]byte(eb.Description)))
		if ue.Description == "" {
			ue.Description = strings.TrimSpace(string(clipBytes(body)))
		}
		if s, err := strconv.Atoi(retryAfter); err == nil && s > 0 {
			ue.RetryAfter = time.Duration(min(s, 600)) * time.Second // bounded before multiplying: no overflow
		}
		if status == http.StatusBadRequest && strings.Contains(strings.ToLower(ue.Description), "identity not found") {
			return nil, fmt.Errorf("%w: IMDS does not know identity %s yet (%w)", ErrIdentityNotFound, id.Spec.ResourceID, ue)
		}
		return nil, ue
	}
	tok, err := parseTokenJSON(body, resource)
	if err != nil {
		return nil, &UpstreamError{Service: "imds", Status: http.StatusBadGateway, Code: "invalid_response", Description: err.Error()}
	}
	if err := verifyManagedIdentity(tok, id, "IMDS"); err != nil {
		return nil, err
	}
	tok.ClientID = id.Spec.ClientID
	return []Token{tok}, nil
}

func clipBytes(b []byte) []byte {
	if len(b) > 256 {
		return b[:256]
	}
	return b
}

// maxTokenLifetime bounds the lifetime NMI believes a token answer has: Azure AD tokens live at
// most a day; a larger figure is a broken answer, not a token to cache for months.
const maxTokenLifetime = 7 * 24 * time.Hour

// parseTokenJSON reads an IMDS or Azure AD v1 token answer; numbers may be strings or numbers.
func parseTokenJSON(body []byte, resource string) (Token, error) {
	var r struct {
		AccessToken string      `json:"access_token"`
		ExpiresIn   json.Number `json:"expires_in"`
		ExpiresOn   json.Number `json:"expires_on"`
		NotBefore   json.Number `json:"not_before"`
		Resource    string      `json:"resource"`
		TokenType   string      `json:"token_type"`
		ClientID    string      `json:"client_id"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return Token{}, fmt.Errorf("token answer is not JSON: %s", clipBytes([]byte(err.Error())))
	}
	if r.AccessToken == "" {
		return Token{}, fmt.Errorf("token answer has no access_token")
	}
	now := time.Now()
	t := Token{AccessToken: r.AccessToken, Resource: r.Resource, TokenType: r.TokenType, ClientID: r.ClientID}
	if on, err := r.ExpiresOn.Int64(); err == nil && on > 0 {
		t.ExpiresOn = time.Unix(on, 0)
	} else if in, err := r.ExpiresIn.Int64(); err == nil && in > 0 && in <= int64(maxTokenLifetime/time.Second) {
		t.ExpiresOn = now.Add(time.Duration(in) * time.Second)
	} else {
		return Token{}, fmt.Errorf("token answer has neither expires_on nor a plausible expires_in (1 s to %s)", maxTokenLifetime)
	}
	if t.ExpiresOn.After(now.Add(maxTokenLifetime)) {
		return Token{}, fmt.Errorf("token answer expires at %s, more than %s from now: refusing to cache it", t.ExpiresOn.UTC().Format(time.RFC3339), maxTokenLifetime)
	}
	if nb, err := r.NotBefore.Int64(); err == nil && nb > 0 {
		t.NotBefore = time.Unix(nb, 0)
	} else {
		t.NotBefore = now
	}
	if t.Resource == "" {
		t.Resource = resource
	}
	if t.TokenType == "" {
		t.TokenType = "Bearer"
	}
	t.ObjectID = objectIDOf(t.AccessToken)
	return t, nil
}

// claims are the access-token claims NMI reads, without verifying the signature: the token comes
// from IMDS or Azure AD over the connection NMI opened, and the claims only check that the
// answer is for the identity asked for, and match object_id selectors.
type claims struct {
	OID      string `json:"oid"`
	AppID    string `json:"appid"` // v1 tokens
	AZP      string `json:"azp"`   // v2 tokens
	MIResID  string `json:"xms_mirid"`
	parsedOK bool
}

func claimsOf(jwt string) claims {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return claims{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return claims{}
	}
	var c claims
	if json.Unmarshal(payload, &c) != nil {
		return claims{}
	}
	c.parsedOK = true
	return c
}

// clientID is the application the token was issued to.
func (c claims) clientID() string {
	if c.AppID != "" {
		return c.AppID
	}
	return c.AZP
}

func objectIDOf(jwt string) string { return claimsOf(jwt).OID }
