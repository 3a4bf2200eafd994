package nmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// Server is NMI's HTTP data plane: the IMDS look-alike that pods reach through the DNAT rule.
type Server struct {
	cfg     Config
	log     logr.Logger
	store   *Store
	cache   *TokenCache
	imds    *IMDSClient
	sp      *ServicePrincipalSource
	proxy   *httputil.ReverseProxy
	metrics *Metrics
	limits  *podLimiter

	prefetchSem chan struct{}
	seenMu      sync.Mutex
	seen        map[string]map[string]struct{} // credentials key -> resources pods asked for

	bufs sync.Pool
}

// NewServer wires a server over store. secrets serves service-principal Secrets (nil: types 1
// and 2 fail with a clear error).
func NewServer(cfg Config, store *Store, secrets SecretGetter, m *Metrics, log logr.Logger) *Server {
	cfg.SetDefaults()
	s := &Server{
		cfg: cfg, log: log, store: store, metrics: m,
		imds:        NewIMDSClient(cfg.MetadataIP, cfg.MetadataPort, cfg.IMDSMaxConcurrent),
		limits:      newPodLimiter(cfg.PodRateLimit, cfg.PodRateBurst),
		prefetchSem: make(chan struct{}, 2),
		seen:        map[string]map[string]struct{}{},
		bufs:        sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }},
	}
	s.cache = NewTokenCache(cfg.Cache, m, log.WithName("cache"))
	s.sp = &ServicePrincipalSource{Secrets: secrets, AuthorityHost: cfg.AuthorityHost, ClientOptions: cfg.AADClientOptions}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort(cfg.MetadataIP, strconv.Itoa(cfg.MetadataPort))}
	s.proxy = &httputil.ReverseProxy{
		// Rewrite (unlike Director) drops inbound X-Forwarded-* headers and adds none: IMDS refuses
		// requests carrying X-Forwarded-For.
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Del("X-Forwarded-For")
		},
		Transport: s.imds.client.Transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, apiError{http.StatusBadGateway, "bad_gateway", fmt.Sprintf("forwarding to IMDS at %s: %v", target.Host, err), 0})
		},
	}
	store.onAssigned = s.prefetch
	store.onPodGone = s.limits.forget
	return s
}

// Cache exposes the token cache (for its background loop and tests).
func (s *Server) Cache() *TokenCache { return s.cache }

// Run runs background work (cache refresh) until ctx ends.
func (s *Server) Run(ctx context.Context) { s.cache.Run(ctx) }

// recorder captures the status for metrics and logs.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Flush keeps streaming answers of the proxy working.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ServeHTTP routes in upstream's order and records one latency observation per request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	rt := classify(r.URL.Path, r.URL.RawPath, s.cfg.BlockInstanceMetadata)
	ns := ""
	defer func() {
		if p := recover(); p != nil {
			s.log.Error(fmt.Errorf("panic: %v", p), "handler panicked", "path", r.URL.Path, "remote", r.RemoteAddr)
			if rec.status == 0 {
				writeError(rec, apiError{http.StatusInternalServerError, "internal_error", "NMI failed on this request; see NMI's log", 0})
			}
		}
		s.metrics.operations.WithLabelValues(rt.String(), s.metrics.status(rec.status), ns).Observe(time.Since(start).Seconds())
	}()
	switch rt {
	case routeToken:
		ns = s.serveToken(rec, r)
	case routeInvalidToken:
		writeError(rec, apiError{http.StatusBadRequest, "invalid_request", "Invalid request: the path looks like the token path but is not it; use /metadata/identity/oauth2/token", 0})
	case routeHostToken:
		ns = s.serveHostToken(rec, r)
	case routeBlocked:
		writeError(rec, apiError{http.StatusForbidden, "forbidden", "Request blocked by AAD Pod Identity NMI: /metadata/instance is blocked on this node (--block-instance-metadata)", 0})
	default:
		if s.cfg.MetadataHeaderRequired && r.Header.Get("Metadata") != "true" {
			writeError(rec, statusOf(ErrNoMetadataHeader, false, 0))
			return
		}
		s.proxy.ServeHTTP(rec, r)
	}
}

func writeError(w http.ResponseWriter, e apiError) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json; charset=utf-8"}
	if e.retryAfter > 0 {
		h["Retry-After"] = []string{strconv.Itoa(int((e.retryAfter + time.Second - 1) / time.Second))}
	}
	body := []byte(`{"error":`)
	body = append(body, jsonString(e.code)...)
	body = append(body, `,"error_description":`...)
	body = append(body, jsonString(e.desc)...)
	body = append(body, '}')
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(e.status)
	_, _ = w.Write(body)
}

// fail logs a refused request with the caller and writes the error.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, pod *podInfo, err error) {
	e := statusOf(err, s.cfg.SetRetryAfterHeader, s.cfg.RetryAfter)
	kv := []any{"status", e.status, "remote", r.RemoteAddr, "path", r.URL.Path, "error", err.Error()}
	if pod != nil {
		kv = append(kv, "pod", pod.key())
	}
	s.log.Info("token request refused", kv...)
	writeError(w, e)
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// serveToken answers pod token requests; it returns the pod's namespace for metrics.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) string {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, apiError{http.StatusMethodNotAllowed, "invalid_request", "The request method " + clip(r.Method) + " is not allowed on the token endpoint; use GET", 0})
		return ""
	}
	if s.cfg.MetadataHeaderRequired && r.Header.Get("Metadata") != "true" {
		s.fail(w, r, nil, ErrNoMetadataHeader)
		return ""
	}
	q, err := ParseTokenQuery(r.URL.RawQuery)
	if err != nil {
		s.fail(w, r, nil, err)
		return ""
	}
	ctx := r.Context()
	pod, err := s.findPod(ctx, remoteIP(r))
	if err != nil {
		s.fail(w, r, nil, err)
		return ""
	}
	if s.store.excepted(pod) || s.isMIC(pod) {
		// Excepted pods get IMDS itself, unfiltered, as upstream; their calls still count against
		// the pod's budget so they cannot drain the node's IMDS quota.
		if err := s.limits.allow(pod); err != nil {
			s.fail(w, r, pod, err)
			return pod.Namespace
		}
		s.proxy.ServeHTTP(w, r)
		return pod.Namespace
	}
	e, _, err := s.tokenFor(ctx, pod, &q)
	if err != nil {
		s.fail(w, r, pod, err)
		return pod.Namespace
	}
	bp := s.bufs.Get().(*[]byte)
	b := e.appendBody((*bp)[:0], time.Now())
	h := w.Header()
	h["Content-Type"] = []string{"application/json; charset=utf-8"}
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	_, _ = w.Write(b)
	*bp = b
	s.bufs.Put(bp)
	return pod.Namespace
}

// serveHostToken answers node agents on loopback that name the pod in headers.
func (s *Server) serveHostToken(w http.ResponseWriter, r *http.Request) string {
	ip := net.ParseIP(remoteIP(r))
	if ip == nil || !(ip.Equal(net.IPv4(127, 0, 0, 1)) || ip.Equal(net.IPv6loopback)) {
		s.fail(w, r, nil, fmt.Errorf("%w: /host/token is only for processes on the node (127.0.0.1), not for %s", ErrNotBound, remoteIP(r)))
		return ""
	}
	podName, podNS := r.Header.Get("podname"), r.Header.Get("podns")
	if podName == "" || podNS == "" {
		s.fail(w, r, nil, fmt.Errorf("%w: missing 'podname' and 'podns' from request header: name the pod whose identity you want", ErrBadRequest))
		return ""
	}
	q, err := ParseTokenQuery(r.URL.RawQuery)
	if err != nil {
		s.fail(w, r, nil, err)
		return ""
	}
	pod := s.store.podByKey(podNS, podName)
	if pod == nil {
		s.fail(w, r, nil, fmt.Errorf("%w: pod %s/%s is not on node %q", ErrNotBound, podNS, podName, s.cfg.NodeName))
		return ""
	}
	e, id, err := s.tokenFor(r.Context(), pod, &q)
	if err != nil {
		s.fail(w, r, pod, err)
		return pod.Namespace
	}
	b := []byte(`{"token":`)
	b = e.appendToken(b, 0, time.Now())
	b = append(b, `,"clientid":`...)
	b = append(b, jsonString(id.Spec.ClientID)...)
	b = append(b, '}')
	h := w.Header()
	h["Content-Type"] = []string{"application/json; charset=utf-8"}
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	_, _ = w.Write(b)
	return pod.Namespace
}

// findPod identifies the caller by IP. An unknown IP may be a pod that has just started and is
// not in the watch yet: wait a little, woken by pod events.
func (s *Server) findPod(ctx context.Context, ip string) (*podInfo, error) {
	var timer *time.Timer
	for {
		changed := s.store.Changed()
		p, err := s.store.podByIP(ip)
		var pnf *PodNotFoundError
		if !errors.As(err, &pnf) {
			return p, err
		}
		pnf.Node = s.cfg.NodeName
		if timer == nil {
			timer = time.NewTimer(s.cfg.PodWaitTimeout)
			defer timer.Stop()
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, err
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (the client gave up: %v)", err, ctx.Err())
		}
	}
}

// isMIC is upstream's short-circuit for MIC's own pods: in --MICNamespace, owned by a
// ReplicaSet whose name starts with "mic".
func (s *Server) isMIC(p *podInfo) bool {
	return strings.EqualFold(p.Namespace, s.cfg.MICNamespace) && strings.HasPrefix(p.OwnerReplicaSet, "mic")
}

// tokenFor authorizes the request from current state, then answers from the cache or fetches.
func (s *Server) tokenFor(ctx context.Context, pod *podInfo, q *TokenQuery) (*cacheEntry, *aadv1.AzureIdentity, error) {
	start := time.Now()
	deadline := start.Add(s.budget())
	// object_id can only be matched once a token has revealed an identity's object ID; each pass
	// learns one, so this ends after at most one pass per bound identity.
	for range 64 {
		id, err := s.resolve(ctx, pod, q, start)
		if err != nil {
			return nil, nil, err
		}
		e, err := s.fetch(ctx, pod, id, q.Resource, deadline)
		if err != nil {
			return nil, nil, err
		}
		if q.ObjectID != "" && !strings.EqualFold(e.tokens[0].ObjectID, q.ObjectID) {
			if e.tokens[0].ObjectID == "" {
				return nil, nil, fmt.Errorf("%w: the token of AzureIdentity %s/%s does not reveal its object ID, so object_id cannot be matched: select the identity with client_id or msi_res_id", ErrNotBound, id.Namespace, id.Name)
			}
			continue
		}
		return e, id, nil
	}
	return nil, nil, fmt.Errorf("%w: no identity of pod %s matches object_id %s", ErrNotBound, pod.key(), q.ObjectID)
}

// budget is the longest a request may wait for its identity (upstream's retry flags).
func (s *Server) budget() time.Duration {
	return time.Duration(s.cfg.RetryAttemptsForCreated+s.cfg.RetryAttemptsForAssigned) * s.cfg.FindIdentityRetryInterval
}

// lookupState is how far a pod's chosen identity is.
type lookupState uint8

const (
	stateReady       lookupState = iota
	stateNoAssign                // no AzureAssignedIdentity yet
	stateNotAssigned             // an assignment exists but is not Assigned (for the current identity)
)

// resolve picks the identity for a request. Standard mode waits, woken by watch events, for MIC
// to assign it (bounded by the retry flags; not at all with --set-retry-after-header).
func (s *Server) resolve(ctx context.Context, pod *podInfo, q *TokenQuery, start time.Time) (*aadv1.AzureIdentity, error) {
	createdBy := start.Add(time.Duration(s.cfg.RetryAttemptsForCreated) * s.cfg.FindIdentityRetryInterval)
	assignedBy := start.Add(s.budget())
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		changed := s.store.Changed()
		id, st, err := s.evaluate(pod, q)
		if err != nil || st == stateReady {
			return id, err
		}
		deadline := assignedBy
		what := "Assigned"
		if st == stateNoAssign {
			deadline, what = createdBy, "created"
		}
		wait := time.Until(deadline)
		if s.cfg.SetRetryAfterHeader || wait <= 0 {
			return nil, fmt.Errorf("%w: AzureIdentity %s/%s of pod %s is not %s on node %q yet (waited %s): retry; if this persists, check MIC's log",
				ErrNotAssigned, id.Namespace, id.Name, pod.key(), what, s.cfg.NodeName, time.Since(start).Round(time.Millisecond))
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-changed:
		case <-timer.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: the client gave up while waiting for AzureIdentity %s/%s of pod %s: %v", ErrNotAssigned, id.Namespace, id.Name, pod.key(), ctx.Err())
		}
	}
}

// evaluate decides from current state, under one read lock: the identity the request gets and
// whether it can be served now.
func (s *Server) evaluate(pod *podInfo, q *TokenQuery) (*aadv1.AzureIdentity, lookupState, error) {
	st := s.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	cur := st.podsByKey[pod.key()]
	if cur == nil || cur.UID != pod.UID {
		return nil, 0, fmt.Errorf("%w: pod %s left node %q", ErrNotBound, pod.key(), s.cfg.NodeName)
	}
	bound := st.boundIdentitiesLocked(cur, s.cfg.ForceNamespaced || s.cfg.OperationMode == ModeManaged)
	if len(bound) == 0 {
		if !cur.HasSelector {
			return nil, 0, fmt.Errorf("%w: pod %s has no %s label, so it is bound to no AzureIdentity: label it with the selector of an AzureIdentityBinding", ErrNotBound, cur.key(), aadv1.PodLabelKey)
		}
		return nil, 0, fmt.Errorf("%w: pod %s (%s=%s) matches no AzureIdentityBinding with an existing AzureIdentity it may use: create the binding and identity (in the pod's namespace in namespaced mode)", ErrNotBound, cur.key(), aadv1.PodLabelKey, cur.Selector)
	}
	var chosen *aadv1.AzureIdentity
	for _, id := range bound {
		if s.matches(id, q) {
			chosen = id
			break
		}
	}
	if chosen == nil {
		return nil, 0, fmt.Errorf("%w: pod %s is not bound to the requested identity (%s)", ErrNotBound, cur.key(), describeSelector(q))
	}
	if s.cfg.OperationMode == ModeManaged {
		return chosen, stateReady, nil
	}
	found, assigned := st.assignmentLocked(cur.key(), chosen)
	switch {
	case assigned:
		return chosen, stateReady, nil
	case found:
		return chosen, stateNotAssigned, nil
	}
	return chosen, stateNoAssign, nil
}

// matches applies the request's selectors; object_id matches only identities whose object ID is
// unknown yet or equal (tokenFor checks it on the token).
func (s *Server) matches(id *aadv1.AzureIdentity, q *TokenQuery) bool {
	if q.ClientID != "" && !strings.EqualFold(q.ClientID, id.Spec.ClientID) {
		return false
	}
	if q.ResourceID != "" && !strings.EqualFold(q.ResourceID, id.Spec.ResourceID) {
		return false
	}
	if q.ObjectID != "" {
		if oid := s.cache.objectID(s.staticCredKey(id)); oid != "" && !strings.EqualFold(oid, q.ObjectID) {
			return false
		}
	}
	return true
}

func describeSelector(q *TokenQuery) string {
	var parts []string
	if q.ClientID != "" {
		parts = append(parts, "client_id="+clip(q.ClientID))
	}
	if q.ResourceID != "" {
		parts = append(parts, "msi_res_id="+clip(q.ResourceID))
	}
	if q.ObjectID != "" {
		parts = append(parts, "object_id="+clip(q.ObjectID))
	}
	return strings.Join(parts, ", ")
}

// staticCredKey identifies an identity's credentials without I/O (for type 0 it is the whole key).
func (s *Server) staticCredKey(id *aadv1.AzureIdentity) string {
	if id.Spec.Type == aadv1.UserAssignedMSI {
		return "msi|" + strings.ToLower(id.Spec.ClientID)
	}
	sec := id.Spec.ClientPassword
	return fmt.Sprintf("sp%d|%s/%s|%s|%s|%s|%s|%s/%s", id.Spec.Type, id.Namespace, id.Name, strings.ToLower(id.Spec.ClientID),
		id.Spec.TenantID, strings.Join(id.Spec.AuxiliaryTenantIDs, ","), s.sp.authority(id), sec.Namespace, sec.Name)
}

// credentials returns the cache key part and the source for an identity.
func (s *Server) credentials(ctx context.Context, id *aadv1.AzureIdentity) (string, TokenSource, error) {
	switch id.Spec.Type {
	case aadv1.UserAssignedMSI:
		return s.staticCredKey(id), s.imds, nil
	case aadv1.ServicePrincipal, aadv1.ServicePrincipalCertificate:
		if s.sp.Secrets == nil {
			return "", nil, fmt.Errorf("%w: AzureIdentity %s/%s is a service principal but this NMI has no Secret access configured", ErrCredential, id.Namespace, id.Name)
		}
		v, err := s.sp.credentialVersion(ctx, id)
		if err != nil {
			return "", nil, err
		}
		return s.staticCredKey(id) + "|" + v, s.sp, nil
	}
	return "", nil, fmt.Errorf("%w: AzureIdentity %s/%s has unsupported type %d: use 0 (user-assigned identity), 1 (service principal with secret) or 2 (service principal with certificate)", ErrCredential, id.Namespace, id.Name, id.Spec.Type)
}

// fetch answers from the cache or, within the pod's rate budget, from Azure, retrying IMDS's
// "Identity not found" (propagation after assignment) until deadline.
func (s *Server) fetch(ctx context.Context, pod *podInfo, id *aadv1.AzureIdentity, resource string, deadline time.Time) (*cacheEntry, error) {
	credKey, src, err := s.credentials(ctx, id)
	if err != nil {
		return nil, err
	}
	key := cacheKey(credKey, resource)
	if e := s.cache.Lookup(key); e != nil {
		return e, nil
	}
	if err := s.limits.allow(pod); err != nil {
		s.metrics.rateLimited.Inc()
		return nil, err
	}
	// Remembered by identity, not credential version: a rotated Secret keeps its resources.
	s.remember(s.staticCredKey(id), resource)
	op := "token_msi_userassignedid"
	if id.Spec.Type != aadv1.UserAssignedMSI {
		op = "token_aad"
	}
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		e, err := s.cache.Fetch(ctx, key, func(ctx context.Context) ([]Token, error) { return src.Fetch(ctx, id, resource) })
		s.metrics.imdsDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
		if err == nil {
			return e, nil
		}
		s.metrics.imdsErrors.WithLabelValues(op).Inc()
		wait := min(backoff, time.Until(deadline))
		if !errors.Is(err, ErrIdentityNotFound) || wait <= 0 {
			return nil, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (the client gave up: %v)", err, ctx.Err())
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// remember records that a resource was asked for with some credentials, so later assignments of
// the same identity prefetch it. Bounded per identity.
func (s *Server) remember(credKey, resource string) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	m := s.seen[credKey]
	if m == nil {
		if len(s.seen) >= 4096 {
			return
		}
		m = map[string]struct{}{}
		s.seen[credKey] = m
	}
	if len(m) < 16 {
		m[resource] = struct{}{}
	}
}

// prefetch fetches tokens for a newly Assigned identity in the background (kiam-style), so the
// pod's first request is a hit. Managed identities retry while IMDS does not know the identity
// yet; service principals read their Secret (starting its watch) and ask Azure AD once.
func (s *Server) prefetch(a *aaiInfo) {
	id := a.Identity
	if id.Spec.Type != aadv1.UserAssignedMSI && s.sp.Secrets == nil {
		return
	}
	resources := map[string]struct{}{}
	for _, r := range s.cfg.PrefetchResources {
		resources[r] = struct{}{}
	}
	s.seenMu.Lock()
	for r := range s.seen[s.staticCredKey(id)] {
		resources[r] = struct{}{}
	}
	s.seenMu.Unlock()
	for r := range resources {
		go func() {
			s.prefetchSem <- struct{}{}
			defer func() { <-s.prefetchSem }()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PrefetchBudget)
			defer cancel()
			err := s.prefetchOne(ctx, id, r)
			result := "ok"
			if err != nil {
				result = "error"
				s.log.V(1).Info("prefetch failed; the first request will fetch", "identity", id.Namespace+"/"+id.Name, "error", err.Error())
			}
			s.metrics.prefetches.WithLabelValues(result).Inc()
		}()
	}
}

func (s *Server) prefetchOne(ctx context.Context, id *aadv1.AzureIdentity, resource string) error {
	credKey, src, err := s.credentials(ctx, id)
	if err != nil {
		return err
	}
	key := cacheKey(credKey, resource)
	backoff := 200 * time.Millisecond
	for {
		if s.cache.Lookup(key) != nil {
			return nil
		}
		_, err := s.cache.Fetch(ctx, key, func(ctx context.Context) ([]Token, error) { return src.Fetch(ctx, id, resource) })
		if err == nil || !errors.Is(err, ErrIdentityNotFound) {
			return err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return err
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// podLimiter is a token bucket per pod for requests that reach Azure.
type podLimiter struct {
	r     rate.Limit
	burst int
	mu    sync.Mutex
	m     map[types.UID]*rate.Limiter
}

func newPodLimiter(perSecond float64, burst int) *podLimiter {
	return &podLimiter{r: rate.Limit(perSecond), burst: burst, m: map[types.UID]*rate.Limiter{}}
}

func (l *podLimiter) allow(p *podInfo) error {
	if l.r <= 0 {
		return nil
	}
	l.mu.Lock()
	lim := l.m[p.UID]
	if lim == nil {
		lim = rate.NewLimiter(l.r, l.burst)
		l.m[p.UID] = lim
	}
	l.mu.Unlock()
	now := time.Now()
	res := lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return &rateLimitError{pod: p.key(), wait: d}
	}
	return nil
}

func (l *podLimiter) forget(uid types.UID) {
	l.mu.Lock()
	delete(l.m, uid)
	l.mu.Unlock()
}
