package emulator

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Limits Azure AD applies to external (federated) assertions.
const (
	// MaxExternalTokenLifetime is the longest exp − iat Azure AD accepts (AADSTS70023).
	MaxExternalTokenLifetime = 25 * time.Hour
	// AssertionClockSkew is the leeway on an assertion's nbf and exp.
	AssertionClockSkew = 5 * time.Minute
)

const wifDocs = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"

// fedClient is who a federated exchange is for: a user-assigned identity or an application.
type fedClient struct {
	appID, oid, tenant, miResID string
	fics                        []*fic
	lifetime                    time.Duration
}

// federatedClient finds the client of an exchange in a tenant; nil when it is unknown there.
func (e *Emulator) federatedClient(tenant, clientID string) *fedClient {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if p := e.principals[strings.ToLower(clientID)]; p != nil {
		if tid := p.Tenants[strings.ToLower(tenant)]; tid != "" {
			return &fedClient{appID: p.AppID, oid: p.objectIDIn(tid), tenant: tid, fics: slices.Clone(p.FICs.list),
				lifetime: e.cfg.Timing.TokenLifetime.Duration}
		}
		return nil
	}
	for _, i := range e.identities {
		if strings.EqualFold(i.ClientID, clientID) && strings.EqualFold(i.TenantID, tenant) {
			return &fedClient{appID: i.ClientID, oid: i.PrincipalID, tenant: i.TenantID, miResID: i.ID,
				fics: slices.Clone(i.FICs.list), lifetime: e.cfg.Timing.IMDSTokenLifetime.Duration}
		}
	}
	return nil
}

// isFederatedAssertion tells an external token (iss an issuer URL, or no certificate thumbprint
// header) from an application's own certificate assertion (iss = sub = client ID, x5t or
// x5t#S256 header), which verifyAssertion checks.
func isFederatedAssertion(assertion, clientID string) bool {
	c := jwt.MapClaims{}
	tok, _, err := jwt.NewParser().ParseUnverified(assertion, c)
	if err != nil {
		return false
	}
	_, x5t := tok.Header["x5t"]
	_, x5t256 := tok.Header["x5t#S256"]
	iss, _ := c["iss"].(string)
	return strings.Contains(iss, "://") || (!x5t && !x5t256 && !strings.EqualFold(iss, clientID))
}

func errUnknownClient(clientID, tenant string) *aadErr {
	return &aadErr{400, "unauthorized_client", 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenant)}
}

func aadTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.0000000Z") }

// checkFederatedAssertion validates an external token in Azure AD's order and returns the
// client it is for, or the AADSTS error Azure AD answers.
func (e *Emulator) checkFederatedAssertion(r *http.Request, tenant, clientID, assertion string, now time.Time) (_ *fedClient, sub string, _ *aadErr) {
	cl := e.federatedClient(tenant, clientID)
	if cl == nil {
		return nil, "", errUnknownClient(clientID, tenant)
	}
	claims := jwt.MapClaims{}
	tok, _, err := jwt.NewParser().ParseUnverified(assertion, claims)
	if err != nil {
		return nil, "", &aadErr{400, "invalid_request", 50027, "JWT token is invalid or malformed: " + err.Error()}
	}
	iss, _ := claims["iss"].(string)
	sub, _ = claims["sub"].(string)
	auds, _ := claims.GetAudience()
	kid, _ := tok.Header["kid"].(string)
	if strings.HasPrefix(iss, e.aadURL+"/") || (kid != "" && kid == e.pki.kid) {
		return nil, sub, &aadErr{401, "invalid_client", 700222, "AAD-issued tokens may not be used for federated identity flows."}
	}
	if ae := e.matchFIC(cl, iss, sub, auds, now); ae != nil {
		return nil, sub, ae
	}
	keys, err := e.issuerKeys(r.Context(), iss)
	if err != nil {
		return nil, sub, &aadErr{400, "invalid_request", 90061, fmt.Sprintf("Request to External OIDC endpoint failed. %v", err)}
	}
	key := keys[kid]
	if key == nil {
		return nil, sub, &aadErr{401, "invalid_client", 7000272, fmt.Sprintf("The certificate with identifier '%s' used to sign the federated credential could not be found in the metadata of identity provider '%s'. Ensure the issuer's JWKS lists the key the token names in its 'kid' header.", kid, iss)}
	}
	if _, err := jwt.Parse(assertion, func(*jwt.Token) (any, error) { return key, nil },
		jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithoutClaimsValidation()); err != nil {
		return nil, sub, &aadErr{401, "invalid_client", 700027, "Client assertion failed signature validation. " + err.Error()}
	}
	if ae := checkAssertionTimes(claims, now); ae != nil {
		return nil, sub, ae
	}
	return cl, sub, nil
}

// matchFIC finds the credential for (iss, sub, aud): issuer, then subject, then audience, each
// compared byte for byte, then the propagation delay.
func (e *Emulator) matchFIC(cl *fedClient, iss, sub string, auds []string, now time.Time) *aadErr {
	generic := &aadErr{401, "invalid_client", 70021, fmt.Sprintf("No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'. %s", iss, sub, strings.Join(auds, ","), wifDocs)}
	if len(cl.fics) == 0 {
		return generic
	}
	var byIss []*fic
	for _, f := range cl.fics {
		if f.Issuer == iss {
			byIss = append(byIss, f)
		}
	}
	if len(byIss) == 0 {
		return &aadErr{401, "invalid_client", 700211, fmt.Sprintf("No matching federated identity record found for presented assertion issuer '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. %s", iss, wifDocs)}
	}
	var f *fic
	for _, c := range byIss {
		if c.Subject == sub {
			f = c
		}
	}
	if f == nil {
		return &aadErr{401, "invalid_client", 700213, fmt.Sprintf("No matching federated identity record found for presented assertion subject '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. %s", sub, wifDocs)}
	}
	if !slices.Contains(auds, f.Audience) {
		return &aadErr{401, "invalid_client", 700212, fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. %s", strings.Join(auds, ","), wifDocs)}
	}
	if now.Sub(f.Created) < e.cfg.Timing.FICPropagation.Duration {
		return generic // created too recently: not yet propagated
	}
	return nil
}

// checkAssertionTimes applies nbf ≤ now < exp (with skew; AADSTS700024) and exp − iat ≤ 25 h
// (AADSTS70023).
func checkAssertionTimes(c jwt.MapClaims, now time.Time) *aadErr {
	var exp, nbf, iat time.Time
	if v, _ := c.GetExpirationTime(); v != nil {
		exp = v.Time
	}
	if v, _ := c.GetNotBefore(); v != nil {
		nbf = v.Time
	}
	if v, _ := c.GetIssuedAt(); v != nil {
		iat = v.Time
	}
	if exp.IsZero() || !now.Before(exp.Add(AssertionClockSkew)) || (!nbf.IsZero() && now.Add(AssertionClockSkew).Before(nbf)) {
		return &aadErr{401, "invalid_client", 700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
			aadTime(now), aadTime(orTime(nbf)), aadTime(orTime(exp)))}
	}
	start := iat
	if start.IsZero() {
		start = nbf
	}
	if !start.IsZero() && exp.Sub(start) > MaxExternalTokenLifetime {
		return &aadErr{400, "invalid_request", 70023, fmt.Sprintf("External OIDC Provider token must have a lifetime of less than or equal to 1.01:00:00. Token issued at %s. Token expires on %s.", aadTime(start), aadTime(exp))}
	}
	return nil
}

// orTime shows a missing time as the epoch, as Azure AD's messages do.
func orTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Unix(0, 0)
	}
	return t
}

// serveFederatedToken answers a client-credentials request whose client_assertion is an external token.
func (e *Emulator) serveFederatedToken(w http.ResponseWriter, r *http.Request, tenant, clientID, resource, assertion string, v2 bool) {
	now := time.Now()
	cl, sub, ae := e.checkFederatedAssertion(r, tenant, clientID, assertion, now)
	if sr, ok := w.(*statusRecorder); ok {
		sr.subject = sub
	}
	if ae != nil {
		writeAADError(w, r, ae)
		return
	}
	tok, exp, err := e.mintToken(tokenSpec{Audience: resource, TenantID: cl.tenant, AppID: cl.appID, OID: cl.oid,
		MIResID: cl.miResID, Lifetime: cl.lifetime}, now)
	if err != nil {
		writeAADError(w, r, &aadErr{500, "server_error", 50000, err.Error()})
		return
	}
	secs := int(cl.lifetime.Seconds()) - 1
	if v2 {
		body := map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok}
		if cl.lifetime >= 2*time.Hour {
			body["refresh_in"] = secs / 2 // Azure AD suggests a proactive refresh for long-lived tokens
		}
		writeJSON(w, 200, body)
		return
	}
	writeJSON(w, 200, map[string]string{"token_type": "Bearer", "expires_in": strconv.Itoa(secs), "ext_expires_in": strconv.Itoa(secs),
		"expires_on": strconv.FormatInt(exp.Unix(), 10), "not_before": strconv.FormatInt(now.Unix(), 10), "resource": resource, "access_token": tok})
}
