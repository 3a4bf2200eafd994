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
	"sync"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// Server is NMI's HTTP data plane: the IMDS look-alike that pods reach through the DNAT rule.
type Server struct {
	cfg     Config
	log     logr.Logger
	store   *Store
	cache   *TokenCache
	imds    *IMDSClient
	sp      *ServicePrincipalSource
	fed     *FederatedSource
	proxy   *httputil.ReverseProxy
	metrics *Metrics
	limits  *podLimiter
	// authorities are where service-principal credentials may be sent (policy.go).
	authorities authorities
	refusals    *refusals
	// confirmReader reads without cache, to confirm grants while the view catches up (set by
	// Agent.Run; nil: such grants are answered 503).
	confirmReader client.Reader

	prefetchSem chan struct{}
	seenMu      sync.Mutex
	seen        map[credKey]map[string]struct{} // static credentials key -> resources pods asked for

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
		refusals:    newRefusals(cfg.Events, log),
		seen:        map[credKey]map[string]struct{}{},
		bufs:        sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }},
	}
	s.cache = NewTokenCache(cfg.Cache, m, log.WithName("cache"))
	// Validate has reported a bad list; here the cloud's authority alone is allowed then.
	s.authorities, _ = newAuthorities(cfg.authorityHost(), cfg.AllowedADEndpoints)
	s.sp = &ServicePrincipalSource{Secrets: secrets, AuthorityHost: cfg.AuthorityHost, ClientOptions: cfg.AADClientOptions}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort(cfg.MetadataIP, strconv.Itoa(cfg.MetadataPort))}
	s.proxy = newIMDSProxy(target, m, log.WithName("proxy")) // own transport and limits: proxy.go
	s.fed = &FederatedSource{tokens: newSATokens(cfg.KubeClient), clientOptions: cfg.AADClientOptions,
		authority: s.federationAuthority, tenant: s.federationTenant, log: log.WithName("federation")}
	store.onAssigned = s.prefetch
	store.onPodGone = s.podGone
	store.onPodRunning = s.podRunning
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
	rt := imdsreq.Classify(r.URL.Path, r.URL.RawPath, s.cfg.BlockInstanceMetadata)
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
	case imdsreq.RouteToken:
		ns = s.serveToken(rec, r)
	case imdsreq.RouteInvalidToken:
		writeError(rec, apiError{http.StatusBadRequest, "invalid_request", "Invalid request: the path looks like the token path but is not it; use /metadata/identity/oauth2/token", 0})
	case imdsreq.RouteHostToken:
		ns = s.serveHostToken(rec, r)
	case imdsreq.RouteBlocked:
		writeError(rec, apiError{http.StatusForbidden, "forbidden", "Request blocked by AAD Pod Identity NMI: /metadata/instance is blocked on this node (--block-instance-metadata)", 0})
	default:
		if s.cfg.MetadataHeaderRequired && r.Header.Get("Metadata") != "true" {
			writeError(rec, statusOf(ErrNoMetadataHeader, false, 0))
			return
		}
		ns = s.serveProxy(rec, r)
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
	s.refuse(w, r, pod, nil, err)
}

// refuse is fail for a request whose identity was chosen: policy refusals are reported on its
// bindings.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, pod *podInfo, g *grant, err error) {
	e := statusOf(err, s.cfg.SetRetryAfterHeader, s.cfg.RetryAfter)
	s.refusals.report(r, pod, g, e.status, err)
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
		writeError(w, apiError{http.StatusMethodNotAllowed, "invalid_request", "The request method " + imdsreq.Clip(r.Method) + " is not allowed on the token endpoint; use GET", 0})
		return ""
	}
	if s.cfg.MetadataHeaderRequired && r.Header.Get("Metadata") != "true" {
		s.fail(w, r, nil, ErrNoMetadataHeader)
		return ""
	}
	q, err := imdsreq.ParseTokenQuery(r.URL.RawQuery)
	if err != nil {
		s.fail(w, r, nil, err)
		return ""
	}
	ctx := r.Context()
	view := s.startView()
	pod, err := s.findPod(ctx, remoteIP(r))
	if err != nil {
		s.fail(w, r, nil, err)
		return ""
	}
	if excepted := s.store.excepted(pod); excepted || s.isMIC(pod) {
		// Excepted pods get IMDS itself, unfiltered, as upstream; their calls still count against
		// the pod's budget so they cannot drain the node's IMDS quota.
		if err := s.confirmPassthrough(ctx, view, pod, excepted); err != nil {
			s.fail(w, r, pod, err)
			return pod.Namespace
		}
		if err := s.limits.allow(pod); err != nil {
			s.fail(w, r, pod, err)
			return pod.Namespace
		}
		s.passthrough(w, r)
		return pod.Namespace
	}
	e, g, err := s.tokenFor(ctx, view, pod, &q)
	if err != nil {
		s.refuse(w, r, pod, g, err)
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
		s.fail(w, r, nil, fmt.Errorf("%w: missing 'podname' and 'podns' from request header: name the pod whose identity you want", imdsreq.ErrBadRequest))
		return ""
	}
	q, err := imdsreq.ParseTokenQuery(r.URL.RawQuery)
	if err != nil {
		s.fail(w, r, nil, err)
		return ""
	}
	view := s.startView()
	pod := s.store.podByKey(podNS, podName)
	if pod == nil {
		s.fail(w, r, nil, fmt.Errorf("%w: pod %s/%s is not on node %q", ErrNotBound, podNS, podName, s.cfg.NodeName))
		return ""
	}
	e, g, err := s.tokenFor(r.Context(), view, pod, &q)
	if err != nil {
		s.refuse(w, r, pod, g, err)
		return pod.Namespace
	}
	id := g.id
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
		p, err := s.store.podByIP(ip, s.cfg.ServeDeletingPods)
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
