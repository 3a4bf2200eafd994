package emulator

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IMDSHost is the address the real IMDS answers on; IMDSTransport maps it to an emulated endpoint.
const IMDSHost = "169.254.169.254:80"

// imdsEndpoint serves IMDS for one VM or VMSS instance.
type imdsEndpoint struct {
	e    *Emulator
	h    *host
	key  string // lower-case canonical host key (for counters)
	url  string
	addr string

	limMu    sync.Mutex
	tokens   float64
	last     time.Time
	inflight atomic.Int32
}

// imdsSel is the identity an IMDS token request resolved to.
type imdsSel struct {
	principal, clientID, miResID, tenant string
	gen                                  int
}

type imdsErr struct {
	status     int
	code, desc string
}

// tokenCache holds issued IMDS tokens per (identity, resource), as IMDS does.
type tokenCache struct {
	mu sync.RWMutex
	m  map[tokenKey]*cachedToken
}

type tokenKey struct {
	principal string
	gen       int
	resource  string
}

type cachedToken struct {
	token     string
	expiresOn time.Time
	// Body pieces with the numbers that change per request left out.
	pre, mid, tail []byte
}

func (t *tokenCache) init() { t.m = map[tokenKey]*cachedToken{} }

var limitsMu sync.RWMutex

// hostLocked resolves a host key (VM name or ID, instance ID, "vmss/N", computer name).
func (e *Emulator) hostLocked(key string) (*host, error) {
	h := e.hosts[strings.ToLower(strings.TrimPrefix(key, "azure://"))]
	if h == nil {
		return nil, &NotFoundError{"VM or VMSS instance", key}
	}
	return h, nil
}

// Hosts returns the canonical keys (resource IDs) of every VM and VMSS instance, for which
// IMDS endpoints can be served.
func (e *Emulator) Hosts() []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	seen := map[*host]bool{}
	var out []string
	for _, h := range e.hosts {
		if !seen[h] {
			seen[h] = true
			out = append(out, h.Key)
		}
	}
	sort.Strings(out)
	return out
}

func (e *Emulator) endpoint(key string) (*imdsEndpoint, error) {
	e.mu.RLock()
	h, err := e.hostLocked(key)
	e.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	e.imdsMu.Lock()
	defer e.imdsMu.Unlock()
	ep := e.imds[h.Key]
	if ep == nil {
		ep = &imdsEndpoint{e: e, h: h, key: strings.ToLower(h.Key), last: time.Now()}
		limitsMu.RLock()
		ep.tokens = e.cfg.IMDS.RequestsPerSecond
		limitsMu.RUnlock()
		e.imds[h.Key] = ep
	}
	return ep, nil
}

// IMDSHandler returns the IMDS handler of one VM or VMSS instance; attach it to any listener
// (e.g. 169.254.169.254:80 inside a node's network namespace). key is a VM name or resource ID,
// a VMSS instance resource ID or provider ID, "vmss/instanceID" or an instance's computer name.
func (e *Emulator) IMDSHandler(key string) (http.Handler, error) {
	return e.endpoint(key)
}

// StartIMDS serves the IMDS of one VM/instance on addr (loopback; "" picks a free port) and
// returns its base URL. Calling it again for the same host returns the running endpoint.
func (e *Emulator) StartIMDS(key, addr string) (string, error) {
	ep, err := e.endpoint(key)
	if err != nil {
		return "", err
	}
	e.imdsMu.Lock()
	defer e.imdsMu.Unlock()
	if ep.url != "" {
		return ep.url, nil
	}
	ln, err := listenLoopback(addr)
	if err != nil {
		return "", fmt.Errorf("start IMDS for %s: %w", key, err)
	}
	ep.addr = ln.Addr().String()
	ep.url = e.serveListener(ln, ep, nil)
	return ep.url, nil
}

// ServeIMDS serves one host's IMDS on a listener the caller opened (any address); it returns
// when the listener is closed or the emulator is closed.
func (e *Emulator) ServeIMDS(key string, ln net.Listener) error {
	ep, err := e.endpoint(key)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: ep, ReadHeaderTimeout: 10 * time.Second}
	e.mu.Lock()
	e.servers = append(e.servers, srv)
	e.mu.Unlock()
	return srv.Serve(ln)
}

// IMDSTransport returns an HTTP client that sends requests for 169.254.169.254:80 to the host's
// emulated IMDS (started on loopback if needed), so ManagedIdentityCredential works unchanged:
// pass it as ManagedIdentityCredentialOptions.ClientOptions.Transport. Other non-loopback
// destinations are refused.
func (e *Emulator) IMDSTransport(key string) (*http.Client, error) {
	if _, err := e.StartIMDS(key, ""); err != nil {
		return nil, err
	}
	ep, _ := e.endpoint(key)
	var d net.Dialer
	return &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 64,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == IMDSHost {
				addr = ep.addr
			} else if h, _, _ := net.SplitHostPort(addr); net.ParseIP(h) == nil || !net.ParseIP(h).IsLoopback() {
				return nil, fmt.Errorf("emulator IMDS transport refuses %s: only %s (mapped to the emulator) and loopback are allowed", addr, IMDSHost)
			}
			return d.DialContext(ctx, network, addr)
		},
	}}, nil
}

// SetIMDSLimits changes the per-VM identity-category limits (zero values: unlimited).
func (e *Emulator) SetIMDSLimits(l IMDSLimits) {
	limitsMu.Lock()
	e.cfg.IMDS = l
	limitsMu.Unlock()
}

func writeIMDSError(w http.ResponseWriter, ie *imdsErr) {
	if ie.code == "" {
		w.WriteHeader(ie.status)
		return
	}
	writeJSON(w, ie.status, map[string]string{"error": ie.code, "error_description": ie.desc})
}

// admit applies the identity category's rate and concurrency limits.
func (ep *imdsEndpoint) admit(now time.Time) bool {
	limitsMu.RLock()
	l := ep.e.cfg.IMDS
	limitsMu.RUnlock()
	if l.MaxConcurrent > 0 && int(ep.inflight.Load()) > l.MaxConcurrent {
		return false
	}
	if l.RequestsPerSecond <= 0 {
		return true
	}
	ep.limMu.Lock()
	defer ep.limMu.Unlock()
	ep.tokens = min(l.RequestsPerSecond, ep.tokens+now.Sub(ep.last).Seconds()*l.RequestsPerSecond)
	ep.last = now
	if ep.tokens < 1 {
		return false
	}
	ep.tokens--
	return true
}

func (ep *imdsEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e := ep.e
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: 200}
	op, ident := OpIMDSNotFound, ""
	defer func() {
		e.counters.inc(CounterKey{Service: ServiceIMDS, Operation: op, Resource: ep.key, Identity: ident, Status: rec.status})
		if l := e.log.V(1); l.Enabled() {
			l.Info("imds call", "host", ep.h.Key, "path", r.URL.Path, "query", r.URL.RawQuery, "identity", ident,
				"status", rec.status, "duration", time.Since(start))
		}
	}()
	p := r.URL.Path
	switch {
	case strings.EqualFold(p, "/metadata/identity/oauth2/token"):
		op = OpIMDSToken
	case strings.EqualFold(p, "/metadata/instance") || strings.EqualFold(p, "/metadata/instance/"):
		op = OpIMDSInstance
	default:
		http.NotFound(rec, r)
		return
	}
	if r.Method != http.MethodGet {
		writeIMDSError(rec, &imdsErr{405, "invalid_request", "The request method " + r.Method + " is not allowed; use GET."})
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		writeIMDSError(rec, &imdsErr{400, "bad_request_103", "Request contains X-Forwarded-For header: IMDS refuses proxied requests."})
		return
	}
	if !strings.EqualFold(r.Header.Get("Metadata"), "true") {
		writeIMDSError(rec, &imdsErr{400, "bad_request_102", "Required metadata header not specified"})
		return
	}
	if op == OpIMDSToken {
		ep.inflight.Add(1)
		defer ep.inflight.Add(-1)
		if !ep.admit(start) {
			rec.Header().Set("Retry-After", "1")
			writeIMDSError(rec, &imdsErr{429, "too_many_requests", "Too many requests: the identity category allows 20 requests/s and 5 concurrent requests per VM."})
			return
		}
	}
	q := parseTokenQuery(r.URL.RawQuery)
	if f := e.faults.take(ServiceIMDS, op, ep.key, q.clientID, q.objectID, q.resID); f != nil {
		if f.Latency.Duration > 0 {
			time.Sleep(f.Latency.Duration)
		}
		if f.Status != 0 {
			if f.RetryAfter.Duration > 0 {
				rec.Header().Set("Retry-After", retryAfterSeconds(f.RetryAfter.Duration))
			}
			writeIMDSError(rec, &imdsErr{f.Status, or(f.Code, "unknown"), or(f.Message, "Failed to retrieve token from the Active directory")})
			return
		}
	}
	if d := e.cfg.Timing.IMDSLatency.Duration; d > 0 {
		time.Sleep(d)
	}
	if op == OpIMDSInstance {
		e.serveInstanceMetadata(rec, ep.h)
		return
	}
	resource := q.resource
	if resource == "" {
		writeIMDSError(rec, &imdsErr{400, "invalid_request", "Required audience parameter not specified"})
		return
	}
	sel, ie := e.selectIdentity(ep.h, q.clientID, q.objectID, q.resID, start)
	if ie != nil {
		writeIMDSError(rec, ie)
		return
	}
	ident = sel.clientID
	ct, err := e.imdsToken(sel, resource, start)
	if err != nil {
		writeIMDSError(rec, &imdsErr{500, "unknown", "Failed to retrieve token from the Active directory: " + err.Error()})
		return
	}
	in := int64(ct.expiresOn.Sub(start) / time.Second)
	buf := make([]byte, 0, len(ct.pre)+len(ct.mid)+len(ct.tail)+24)
	buf = append(buf, ct.pre...)
	buf = strconv.AppendInt(buf, in, 10)
	buf = append(buf, ct.mid...)
	buf = strconv.AppendInt(buf, in, 10)
	buf = append(buf, ct.tail...)
	h := rec.Header()
	h["Content-Type"] = []string{"application/json; charset=utf-8"}
	h["Content-Length"] = []string{strconv.Itoa(len(buf))}
	_, _ = rec.Write(buf)
}

// selectIdentity picks the identity a token request is for, from the host's ARM state: only
// assignments whose propagation delay has passed and whose identity was not deleted/re-created.
func (e *Emulator) selectIdentity(h *host, clientID, objectID, resID string, now time.Time) (imdsSel, *imdsErr) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c := h.Res
	notFound := &imdsErr{400, "invalid_request", "Identity not found"}
	live := func(l string, a *assignment) bool {
		if now.Before(a.VisibleAt) {
			return false
		}
		idn := e.identities[l]
		return idn != nil && idn.Generation == a.Generation
	}
	pick := func(l string, a *assignment) imdsSel {
		return imdsSel{principal: a.PrincipalID, clientID: a.ClientID, miResID: a.ID, tenant: e.identities[l].TenantID, gen: a.Generation}
	}
	system := func() imdsSel {
		return imdsSel{principal: c.Identity.SystemPrincipalID, clientID: derivedGUID("sysclient:" + c.Identity.SystemPrincipalID),
			miResID: c.ID, tenant: c.TenantID}
	}
	switch {
	case clientID != "":
		for l, a := range c.Identity.User {
			if strings.EqualFold(a.ClientID, clientID) && live(l, a) {
				return pick(l, a), nil
			}
		}
		return imdsSel{}, notFound
	case objectID != "":
		if c.Identity.System && strings.EqualFold(objectID, c.Identity.SystemPrincipalID) {
			return system(), nil
		}
		for l, a := range c.Identity.User {
			if strings.EqualFold(a.PrincipalID, objectID) && live(l, a) {
				return pick(l, a), nil
			}
		}
		return imdsSel{}, notFound
	case resID != "":
		l := strings.ToLower(resID)
		if a, ok := c.Identity.User[l]; ok && live(l, a) {
			return pick(l, a), nil
		}
		return imdsSel{}, notFound
	}
	if c.Identity.System {
		return system(), nil
	}
	var found []string
	for l, a := range c.Identity.User {
		if live(l, a) {
			found = append(found, l)
		}
	}
	switch len(found) {
	case 0:
		return imdsSel{}, notFound
	case 1:
		return pick(found[0], c.Identity.User[found[0]]), nil
	}
	return imdsSel{}, &imdsErr{400, "invalid_request", "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}
}

// imdsToken returns the cached token for (identity, resource), minting one when missing or
// within 5 minutes of expiry.
func (e *Emulator) imdsToken(sel imdsSel, resource string, now time.Time) (*cachedToken, error) {
	k := tokenKey{sel.principal, sel.gen, resource}
	e.tokens.mu.RLock()
	ct := e.tokens.m[k]
	e.tokens.mu.RUnlock()
	if ct != nil && now.Add(5*time.Minute).Before(ct.expiresOn) {
		return ct, nil
	}
	e.tokens.mu.Lock()
	defer e.tokens.mu.Unlock()
	if ct = e.tokens.m[k]; ct != nil && now.Add(5*time.Minute).Before(ct.expiresOn) {
		return ct, nil
	}
	tok, exp, err := e.mintToken(tokenSpec{Audience: resource, TenantID: sel.tenant, AppID: sel.clientID, OID: sel.principal,
		MIResID: sel.miResID, Lifetime: e.cfg.Timing.IMDSTokenLifetime.Duration}, now)
	if err != nil {
		return nil, err
	}
	js := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	ct = &cachedToken{token: tok, expiresOn: exp,
		pre:  []byte(`{"access_token":` + js(tok) + `,"client_id":` + js(sel.clientID) + `,"expires_in":"`),
		mid:  []byte(`","expires_on":"` + strconv.FormatInt(exp.Unix(), 10) + `","ext_expires_in":"`),
		tail: []byte(`","not_before":"` + strconv.FormatInt(now.Unix(), 10) + `","resource":` + js(resource) + `,"token_type":"Bearer"}`),
	}
	e.tokens.m[k] = ct
	return ct, nil
}

func (e *Emulator) serveInstanceMetadata(w http.ResponseWriter, h *host) {
	e.mu.RLock()
	c := h.Res
	name, vmID, resID, vmss := c.Name, c.VMID, c.ID, ""
	idx := 4
	if h.Inst != nil {
		name, vmID, resID, vmss = h.Inst.ComputerName, h.Inst.VMID, h.Inst.ID, c.Name
		n, _ := strconv.Atoi(h.Inst.InstanceID)
		idx += n
	}
	loc, rg, sub := c.Location, c.RG, c.Sub
	e.mu.RUnlock()
	writeJSON(w, 200, map[string]any{
		"compute": map[string]any{"azEnvironment": "AzurePublicCloud", "location": loc, "name": name, "resourceGroupName": rg,
			"subscriptionId": sub, "vmId": vmID, "vmScaleSetName": vmss, "resourceId": resID, "osType": "Linux",
			"vmSize": "Standard_D2s_v3", "provider": "Microsoft.Compute"},
		"network": map[string]any{"interface": []any{map[string]any{
			"ipv4": map[string]any{
				"ipAddress": []any{map[string]string{"privateIpAddress": fmt.Sprintf("10.240.0.%d", idx), "publicIpAddress": ""}},
				"subnet":    []any{map[string]string{"address": "10.240.0.0", "prefix": "16"}}},
			"ipv6":       map[string]any{"ipAddress": []any{}},
			"macAddress": fmt.Sprintf("000D3A%06X", idx)}}},
	})
}

// tokenQuery holds the token request parameters IMDS reads.
type tokenQuery struct{ resource, clientID, objectID, resID string }

// parseTokenQuery reads only the parameters IMDS uses, without building a url.Values map: the
// token path is the emulator's hot path.
func parseTokenQuery(raw string) tokenQuery {
	var q tokenQuery
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(kv, "=")
		var dst *string
		switch k {
		case "resource":
			dst = &q.resource
		case "client_id":
			dst = &q.clientID
		case "object_id":
			dst = &q.objectID
		case "mi_res_id", "msi_res_id":
			dst = &q.resID
		default:
			continue
		}
		if *dst != "" {
			continue // first occurrence wins, as url.Values.Get
		}
		if strings.ContainsAny(v, "%+") {
			if u, err := url.QueryUnescape(v); err == nil {
				v = u
			}
		}
		*dst = v
	}
	return q
}
