package emulator

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// tokenSpec describes an access token to mint.
type tokenSpec struct {
	Audience, TenantID, AppID, OID, MIResID string
	Lifetime                                time.Duration
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	x := hex.EncodeToString(b[:])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// Issuer is the "iss" of access tokens for a tenant (v1 form: authority host, tenant, slash).
func (e *Emulator) Issuer(tenantID string) string { return e.aadURL + "/" + tenantID + "/" }

// mintToken signs an RS256 access token with the emulator key (published in JWKS).
func (e *Emulator) mintToken(s tokenSpec, now time.Time) (string, time.Time, error) {
	exp := now.Add(s.Lifetime)
	uti := make([]byte, 16)
	_, _ = rand.Read(uti)
	c := jwt.MapClaims{
		"aud": s.Audience, "iss": e.Issuer(s.TenantID), "iat": now.Unix(), "nbf": now.Unix(), "exp": exp.Unix(),
		"tid": s.TenantID, "appid": s.AppID, "azp": s.AppID, "appidacr": "2", "oid": s.OID, "sub": s.OID,
		"idtyp": "app", "ver": "1.0", "uti": base64.RawURLEncoding.EncodeToString(uti),
	}
	if s.MIResID != "" {
		c["xms_mirid"] = s.MIResID
		c["appidacr"] = "2"
	}
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	t.Header["kid"] = e.pki.kid
	t.Header["x5t"] = e.pki.kid
	str, err := t.SignedString(e.pki.signer)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign access token: %w", err)
	}
	return str, exp, nil
}

// JWKS returns the JSON Web Key Set that verifies the emulator's access tokens.
func (e *Emulator) JWKS() []byte {
	pub := e.pki.signer.PublicKey
	k := map[string]any{
		"kty": "RSA", "use": "sig", "kid": e.pki.kid, "x5t": e.pki.kid,
		"n":   base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e":   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
		"x5c": []string{base64.StdEncoding.EncodeToString(e.pki.certDER)},
	}
	b, _ := json.Marshal(map[string]any{"keys": []any{k}})
	return b
}

// VerifyToken checks an access token's signature and lifetime and returns its claims. Other
// packages' tests use it to check what they received.
func (e *Emulator) VerifyToken(tok string) (jwt.MapClaims, error) {
	c := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(tok, c, func(*jwt.Token) (any, error) { return &e.pki.signer.PublicKey, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithExpirationRequired())
	if err != nil {
		return nil, fmt.Errorf("verify emulator access token: %w", err)
	}
	return c, nil
}

type aadErrorBody struct {
	Error         string `json:"error"`
	Description   string `json:"error_description"`
	Codes         []int  `json:"error_codes"`
	Timestamp     string `json:"timestamp"`
	TraceID       string `json:"trace_id"`
	CorrelationID string `json:"correlation_id"`
	URI           string `json:"error_uri"`
}

// aadErr is an AADSTS error answer.
type aadErr struct {
	status int
	code   string
	sts    int
	msg    string
}

func (a *aadErr) Error() string { return fmt.Sprintf("AADSTS%d: %s", a.sts, a.msg) }

func writeAADError(w http.ResponseWriter, r *http.Request, a *aadErr) {
	if sr, ok := w.(*statusRecorder); ok {
		sr.code = a.sts
	}
	now := time.Now().UTC()
	trace, corr := randomID(), r.Header.Get("client-request-id")
	if corr == "" {
		corr = randomID()
	}
	ts := now.Format("2006-01-02 15:04:05Z")
	writeJSON(w, a.status, aadErrorBody{
		Error:       a.code,
		Description: fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s", a.sts, a.msg, trace, corr, ts),
		Codes:       []int{a.sts}, Timestamp: ts, TraceID: trace, CorrelationID: corr,
		URI: "https://login.microsoftonline.com/error?code=" + strconv.Itoa(a.sts),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (e *Emulator) tenantKnown(t string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.tenants[strings.ToLower(t)]
}

func errUnknownTenant(t string) *aadErr {
	return &aadErr{400, "invalid_tenant", 90002, fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", t)}
}

func (e *Emulator) aadHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		tenant := parts[0]
		rest := strings.ToLower(strings.Join(parts[1:], "/"))
		op, ident := "", ""
		rec := &statusRecorder{ResponseWriter: w, status: 200}
		defer func() {
			e.counters.inc(CounterKey{Service: ServiceAAD, Operation: op, Resource: tenant, Identity: ident, Subject: rec.subject, Code: rec.code, Status: rec.status})
			e.log.V(1).Info("aad call", "method", r.Method, "path", r.URL.Path, "op", op, "tenant", tenant,
				"client", ident, "status", rec.status, "duration", time.Since(start))
		}()
		switch {
		case strings.EqualFold(tenant, "common") && rest == "discovery/instance":
			op = OpAADDiscovery
		case rest == "v2.0/.well-known/openid-configuration" || rest == ".well-known/openid-configuration":
			op = OpAADOpenID
		case rest == "discovery/v2.0/keys" || rest == "discovery/keys":
			op = OpAADKeys
		case rest == "oauth2/v2.0/token" || rest == "oauth2/token":
			op = OpAADToken
			ident = r.PostFormValue("client_id")
		default:
			op = "NotFound"
			writeAADError(rec, r, &aadErr{404, "invalid_request", 900561, fmt.Sprintf("The endpoint only accepts POST, OPTIONS requests. Received a %s request for path %s.", r.Method, r.URL.Path)})
			return
		}
		if f := e.faults.take(ServiceAAD, op, tenant); f != nil {
			if f.Latency.Duration > 0 {
				time.Sleep(f.Latency.Duration)
			}
			if f.Status != 0 {
				if f.RetryAfter.Duration > 0 {
					rec.Header().Set("Retry-After", retryAfterSeconds(f.RetryAfter.Duration))
				}
				writeAADError(rec, r, &aadErr{f.Status, or(f.Code, "temporarily_unavailable"), 50001, or(f.Message, "Injected fault.")})
				return
			}
		}
		if d := e.cfg.Timing.AADLatency.Duration; d > 0 {
			time.Sleep(d)
		}
		switch op {
		case OpAADDiscovery:
			e.serveInstanceDiscovery(rec, r)
		case OpAADOpenID:
			if !e.tenantKnown(tenant) && !isMetaTenant(tenant) {
				writeAADError(rec, r, errUnknownTenant(tenant))
				return
			}
			e.serveOpenID(rec, tenant, strings.HasPrefix(rest, "v2.0"))
		case OpAADKeys:
			rec.Header().Set("Content-Type", "application/json; charset=utf-8")
			_, _ = rec.Write(e.JWKS())
		case OpAADToken:
			if r.Method != http.MethodPost {
				writeAADError(rec, r, &aadErr{405, "invalid_request", 900561, "The endpoint only accepts POST, OPTIONS requests. Received a " + r.Method + " request."})
				return
			}
			e.serveToken(rec, r, tenant, rest == "oauth2/v2.0/token")
		}
	})
}

func isMetaTenant(t string) bool {
	switch strings.ToLower(t) {
	case "common", "organizations", "consumers":
		return true
	}
	return false
}

func (e *Emulator) serveInstanceDiscovery(w http.ResponseWriter, r *http.Request) {
	host := strings.TrimPrefix(e.aadURL, "https://")
	tenant := "common"
	if ae := r.URL.Query().Get("authorization_endpoint"); ae != "" {
		if p := strings.Split(strings.TrimPrefix(strings.TrimPrefix(ae, "https://"), host), "/"); len(p) > 1 && p[1] != "" {
			tenant = p[1]
		}
	}
	writeJSON(w, 200, map[string]any{
		"tenant_discovery_endpoint": e.aadURL + "/" + tenant + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata":                  []any{map[string]any{"preferred_network": host, "preferred_cache": host, "aliases": []string{host}}},
	})
}

func (e *Emulator) serveOpenID(w http.ResponseWriter, tenant string, v2 bool) {
	base := e.aadURL + "/" + tenant
	issTenant := tenant
	if isMetaTenant(tenant) {
		issTenant = "{tenantid}"
	}
	doc := map[string]any{
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "token id_token", "token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"tenant_region_scope":                   "NA",
		"cloud_instance_name":                   "emulator",
	}
	if v2 {
		doc["token_endpoint"] = base + "/oauth2/v2.0/token"
		doc["authorization_endpoint"] = base + "/oauth2/v2.0/authorize"
		doc["jwks_uri"] = base + "/discovery/v2.0/keys"
		doc["issuer"] = e.aadURL + "/" + issTenant + "/v2.0"
	} else {
		doc["token_endpoint"] = base + "/oauth2/token"
		doc["authorization_endpoint"] = base + "/oauth2/authorize"
		doc["jwks_uri"] = base + "/discovery/keys"
		doc["issuer"] = e.Issuer(issTenant)
	}
	writeJSON(w, 200, doc)
}

func (e *Emulator) serveToken(w http.ResponseWriter, r *http.Request, tenant string, v2 bool) {
	if !e.tenantKnown(tenant) {
		writeAADError(w, r, errUnknownTenant(tenant))
		return
	}
	f := r.PostForm
	gt := f.Get("grant_type")
	if gt == "" {
		writeAADError(w, r, &aadErr{400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."})
		return
	}
	if gt != "client_credentials" {
		writeAADError(w, r, &aadErr{400, "unsupported_grant_type", 70003, fmt.Sprintf("The app requested an unsupported grant type '%s'. The emulator supports only client_credentials.", gt)})
		return
	}
	clientID := f.Get("client_id")
	if clientID == "" {
		writeAADError(w, r, &aadErr{400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."})
		return
	}
	var resource string
	if v2 {
		scope := strings.TrimSpace(f.Get("scope"))
		if scope == "" {
			writeAADError(w, r, &aadErr{400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."})
			return
		}
		// MSAL adds the OIDC scopes; AAD ignores them in client-credential requests.
		var res []string
		for _, s := range strings.Fields(scope) {
			switch s {
			case "openid", "offline_access", "profile":
			default:
				res = append(res, s)
			}
		}
		if len(res) != 1 || !strings.HasSuffix(res[0], "/.default") {
			writeAADError(w, r, &aadErr{400, "invalid_scope", 1002012, fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope)})
			return
		}
		resource = strings.TrimSuffix(res[0], "/.default")
	} else {
		resource = f.Get("resource")
		if resource == "" {
			writeAADError(w, r, &aadErr{400, "invalid_request", 900144, "The request body must contain the following parameter: 'resource'."})
			return
		}
	}
	if as := f.Get("client_assertion"); as != "" && f.Get("client_secret") == "" && isFederatedAssertion(as, clientID) {
		switch t := f.Get("client_assertion_type"); t {
		case "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
		case "":
			writeAADError(w, r, &aadErr{400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_assertion_type'."})
			return
		default:
			writeAADError(w, r, &aadErr{400, "invalid_request", 50027, fmt.Sprintf("Invalid client_assertion_type '%s'; use urn:ietf:params:oauth:client-assertion-type:jwt-bearer.", t)})
			return
		}
		e.serveFederatedToken(w, r, tenant, clientID, resource, as, v2)
		return
	}
	e.mu.RLock()
	p := e.principals[strings.ToLower(clientID)]
	e.mu.RUnlock()
	var tid string
	if p != nil {
		tid = p.Tenants[strings.ToLower(tenant)]
	}
	if tid == "" {
		writeAADError(w, r, &aadErr{400, "unauthorized_client", 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenant)})
		return
	}
	if sec := f.Get("client_secret"); sec != "" {
		ok := false
		for _, s := range p.Secrets {
			if s == sec {
				ok = true
			}
		}
		if !ok {
			writeAADError(w, r, &aadErr{401, "invalid_client", 7000215, fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", p.AppID)})
			return
		}
	} else if as := f.Get("client_assertion"); as != "" {
		if t := f.Get("client_assertion_type"); t != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			writeAADError(w, r, &aadErr{400, "invalid_request", 50027, fmt.Sprintf("Invalid client_assertion_type '%s'; use urn:ietf:params:oauth:client-assertion-type:jwt-bearer.", t)})
			return
		}
		if ae := e.verifyAssertion(p, as, tenant); ae != nil {
			writeAADError(w, r, ae)
			return
		}
	} else {
		writeAADError(w, r, &aadErr{401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."})
		return
	}
	now := time.Now()
	life := e.cfg.Timing.TokenLifetime.Duration
	tok, exp, err := e.mintToken(tokenSpec{Audience: resource, TenantID: tid, AppID: p.AppID, OID: p.objectIDIn(tid), Lifetime: life}, now)
	if err != nil {
		writeAADError(w, r, &aadErr{500, "server_error", 50000, err.Error()})
		return
	}
	secs := int(life.Seconds()) - 1
	if v2 {
		writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok})
		return
	}
	writeJSON(w, 200, map[string]string{"token_type": "Bearer", "expires_in": strconv.Itoa(secs), "ext_expires_in": strconv.Itoa(secs),
		"expires_on": strconv.FormatInt(exp.Unix(), 10), "not_before": strconv.FormatInt(now.Unix(), 10), "resource": resource, "access_token": tok})
}

// verifyAssertion checks a certificate client assertion: RS256+x5t or PS256+x5t#S256 signed by
// a registered certificate, aud = this tenant's token endpoint, iss = sub = client ID, exp/nbf.
func (e *Emulator) verifyAssertion(p *principal, assertion, tenant string) *aadErr {
	var thumb string
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(assertion, claims, func(t *jwt.Token) (any, error) {
		var ci *certInfo
		switch t.Method.Alg() {
		case "RS256":
			thumb, _ = t.Header["x5t"].(string)
			ci = p.CertsSHA1[decodeThumbprint(thumb)]
		case "PS256":
			thumb, _ = t.Header["x5t#S256"].(string)
			ci = p.CertsSHA256[decodeThumbprint(thumb)]
		}
		if ci == nil {
			return nil, errKeyNotFound
		}
		return ci.Public, nil
	}, jwt.WithValidMethods([]string{"RS256", "PS256"}), jwt.WithExpirationRequired(), jwt.WithLeeway(5*time.Minute))
	if err != nil {
		if errors.Is(err, errKeyNotFound) {
			return &aadErr{401, "invalid_client", 700027, fmt.Sprintf("The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'.]", strings.ToUpper(decodeThumbprint(thumb)), p.AppID)}
		}
		if errors.Is(err, jwt.ErrTokenExpired) || errors.Is(err, jwt.ErrTokenNotValidYet) {
			return &aadErr{401, "invalid_client", 700024, "Client assertion is not within its valid time range. Check the clock and the assertion's nbf and exp."}
		}
		return &aadErr{401, "invalid_client", 700027, "Client assertion failed signature validation. " + err.Error()}
	}
	iss, _ := claims["iss"].(string)
	sub, _ := claims["sub"].(string)
	if !strings.EqualFold(iss, p.AppID) || !strings.EqualFold(sub, p.AppID) {
		return &aadErr{401, "invalid_client", 700021, fmt.Sprintf("Client assertion application identifier doesn't match 'client_id' parameter: iss '%s' and sub '%s' must both be '%s'.", iss, sub, p.AppID)}
	}
	auds, _ := claims.GetAudience()
	base := e.aadURL + "/" + tenant
	for _, a := range auds {
		if strings.EqualFold(a, base+"/oauth2/v2.0/token") || strings.EqualFold(a, base+"/oauth2/token") {
			return nil
		}
	}
	return &aadErr{401, "invalid_client", 700212, fmt.Sprintf("Client assertion audience claim %v does not match the token endpoint %s/oauth2/v2.0/token.", auds, base)}
}

var errKeyNotFound = errors.New("assertion signing key not registered")

type statusRecorder struct {
	http.ResponseWriter
	status  int
	subject string // AAD: the federated assertion's sub, for counters
	code    int    // AAD: the AADSTS code answered
}

func (s *statusRecorder) WriteHeader(c int) {
	s.status = c
	s.ResponseWriter.WriteHeader(c)
}

func retryAfterSeconds(d time.Duration) string {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return strconv.Itoa(s)
}
