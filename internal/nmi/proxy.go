package nmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// The IMDS proxy forwards what pods may see of the real IMDS besides tokens (and, for excepted
// and MIC pods, the token path itself). It has its own connections, concurrency cap and per-pod
// budget, so that no amount of proxied traffic can hold the slots NMI's own token fetches need.
const (
	// proxyMaxConcurrent caps proxied requests in flight (token fetches have their own
	// --imds-max-concurrent slots on another transport).
	proxyMaxConcurrent = 8
	// proxySlotWait is how long a request waits for a slot before it is answered 503.
	proxySlotWait = 2 * time.Second
	// proxyPodRate and proxyPodBurst are each pod's budget of proxied requests: IMDS itself
	// allows 5 requests/s per VM for its non-identity APIs, so a pod polling faster only gets
	// the whole VM throttled.
	proxyPodRate  = 5
	proxyPodBurst = 10
	// proxyHeaderTimeout bounds the wait for IMDS's answer: the first scheduledevents call of a
	// VM may take up to two minutes.
	proxyHeaderTimeout = 150 * time.Second
	// proxyLimiterSweep is how often idle per-pod limiters are dropped.
	proxyLimiterSweep = time.Minute
)

// proxyInstancePath is forwarded with its sub-paths (e.g. /metadata/instance/compute/vmId).
const proxyInstancePath = "/metadata/instance"

// proxyExactPaths are the other documented IMDS APIs, forwarded only as exactly these paths.
var proxyExactPaths = []string{
	"/metadata/attested/document",
	"/metadata/scheduledevents",
	"/metadata/loadbalancer",
	"/metadata/versions",
	"/metadata/identity/info",
}

var (
	// errProxyBusy: every proxy slot stayed taken for proxySlotWait.
	errProxyBusy = errors.New("NMI's IMDS proxy is at its concurrency limit")
	// errUpstreamUpgrade: IMDS answered with a protocol switch, which is never passed on.
	errUpstreamUpgrade = errors.New("IMDS answered with a protocol switch")
)

// proxyPodKey carries the calling pod from serveProxy to the transport's rate limit.
type proxyPodKey struct{}

// newIMDSProxy returns the reverse proxy to IMDS at target over its own transport.
func newIMDSProxy(target *url.URL, m *Metrics, log logr.Logger) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		// Rewrite (unlike Director) drops inbound X-Forwarded-* headers and adds none: IMDS refuses
		// requests carrying X-Forwarded-For.
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header.Del("X-Forwarded-For")
		},
		Transport: newProxyTransport(),
		// A 101 here means IMDS switched protocols although the request asked for no upgrade
		// (those are refused before forwarding): never open a tunnel through NMI.
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				return fmt.Errorf("%w (%d, Upgrade %q)", errUpstreamUpgrade, resp.StatusCode, imdsreq.Clip(resp.Header.Get("Upgrade")))
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			var rl *rateLimitError
			switch {
			case errors.As(err, &rl):
				m.proxyRefused.WithLabelValues("rate_limited").Inc()
				writeError(w, apiError{http.StatusTooManyRequests, "too_many_requests",
					fmt.Sprintf("pod %s sends IMDS requests (other than for tokens) faster than NMI forwards them (%d/s, burst %d): retry after %s",
						rl.pod, proxyPodRate, proxyPodBurst, rl.wait.Round(time.Millisecond)), max(rl.wait, time.Second)})
			case errors.Is(err, errProxyBusy):
				m.proxyRefused.WithLabelValues("busy").Inc()
				writeError(w, apiError{http.StatusServiceUnavailable, "proxy_busy", err.Error() + ": retry in a moment", time.Second})
			case errors.Is(err, errUpstreamUpgrade):
				m.proxyRefused.WithLabelValues("upstream_upgrade").Inc()
				log.Info("IMDS answer refused", "path", imdsreq.Clip(r.URL.Path), "error", err.Error())
				writeError(w, apiError{http.StatusBadGateway, "bad_gateway", err.Error() + "; NMI does not pass protocol switches on", 0})
			default:
				writeError(w, apiError{http.StatusBadGateway, "bad_gateway", fmt.Sprintf("forwarding to IMDS at %s: %v", target.Host, err), 0})
			}
		},
	}
}

// serveProxy forwards a pod's non-token request to IMDS; it returns the pod's namespace for
// metrics. The caller has already checked the Metadata header.
func (s *Server) serveProxy(w http.ResponseWriter, r *http.Request) string {
	if e := checkProxyRequest(r); e != nil {
		s.refuseProxy(w, r, *e)
		return ""
	}
	if !allowedIMDSPath(r.URL.Path, r.URL.RawPath, s.cfg.BlockInstanceMetadata) {
		s.refuseProxy(w, r, apiError{http.StatusNotFound, "not_found",
			fmt.Sprintf("NMI forwards only the documented IMDS API paths (%s); %q is not one of them", allowedPathList(s.cfg.BlockInstanceMetadata), imdsreq.Clip(r.URL.Path)), 0})
		return ""
	}
	pod, err := s.findPod(r.Context(), remoteIP(r))
	if err != nil {
		s.fail(w, r, nil, err)
		return ""
	}
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), proxyPodKey{}, pod)))
	return pod.Namespace
}

// passthrough forwards an excepted or MIC pod's token request to IMDS. The token path has
// already checked the method, header and query, found the pod and charged its budget.
func (s *Server) passthrough(w http.ResponseWriter, r *http.Request) {
	if e := checkProxyRequest(r); e != nil {
		s.refuseProxy(w, r, *e)
		return
	}
	s.proxy.ServeHTTP(w, r)
}

// refuseProxy answers a refused proxy request; repeated refusals are a client bug, not news,
// so they are logged at V(1) only.
func (s *Server) refuseProxy(w http.ResponseWriter, r *http.Request, e apiError) {
	s.metrics.proxyRefused.WithLabelValues(e.code).Inc()
	s.log.V(1).Info("proxy request refused", "status", e.status, "remote", r.RemoteAddr, "method", imdsreq.Clip(r.Method), "path", imdsreq.Clip(r.URL.Path))
	if e.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", http.MethodGet)
	}
	writeError(w, e)
}

// checkProxyRequest refuses what IMDS's read-only API never needs: methods other than GET, a
// body, protocol upgrades (a tunnel to IMDS would bypass every check) and oversized queries.
func checkProxyRequest(r *http.Request) *apiError {
	switch {
	case r.Method != http.MethodGet:
		return &apiError{http.StatusMethodNotAllowed, "method_not_allowed",
			"The request method " + imdsreq.Clip(r.Method) + " is not allowed: NMI forwards only GET requests to IMDS", 0}
	case r.Header.Get("Upgrade") != "" || headerHasToken(r.Header, "Connection", "upgrade"):
		return &apiError{http.StatusBadRequest, "upgrade_not_allowed",
			"Protocol upgrades (Connection: Upgrade, Upgrade headers) are not allowed: IMDS is plain HTTP request/response; drop those headers", 0}
	case r.ContentLength != 0 || len(r.TransferEncoding) > 0:
		return &apiError{http.StatusBadRequest, "body_not_allowed",
			"A request body is not allowed: IMDS GET requests carry none; send the request without a body", 0}
	case len(r.URL.RawQuery) > imdsreq.MaxQueryLen:
		return &apiError{http.StatusBadRequest, "invalid_request",
			fmt.Sprintf("The query string is %d bytes, more than the %d allowed", len(r.URL.RawQuery), imdsreq.MaxQueryLen), 0}
	}
	return nil
}

// headerHasToken reports whether a comma-separated header lists token (case-insensitively).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// allowedIMDSPath reports whether p is a documented IMDS API path. Only canonical spellings
// pass (no percent-encoding, dot segments or doubled slashes): what IMDS receives is exactly
// what was checked. One trailing slash is tolerated.
func allowedIMDSPath(p, rawPath string, blockInstance bool) bool {
	if rawPath != "" || p == "" || p[0] != '/' {
		return false
	}
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	if path.Clean(p) != p {
		return false
	}
	if p == proxyInstancePath || strings.HasPrefix(p, proxyInstancePath+"/") {
		return !blockInstance && plainPath(p[len(proxyInstancePath):])
	}
	for _, a := range proxyExactPaths {
		if p == a {
			return true
		}
	}
	return false
}

// plainPath reports whether an instance sub-path has only the characters IMDS's own sub-paths
// use (e.g. /network/interface/0/ipv4/ipAddress/0/privateIpAddress).
func plainPath(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '/' || c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// allowedPathList names the forwarded paths for error messages.
func allowedPathList(blockInstance bool) string {
	var l []string
	if !blockInstance {
		l = append(l, proxyInstancePath+" (and its sub-paths)")
	}
	return strings.Join(append(l, proxyExactPaths...), ", ")
}

// proxyTransport is the proxy's own connection pool, concurrency cap and per-pod budget.
type proxyTransport struct {
	next   *limitedTransport
	limits *podLimiter
	swept  time.Time // guarded by limits.mu
}

func newProxyTransport() *proxyTransport {
	return &proxyTransport{
		next: &limitedTransport{
			next: &http.Transport{
				Proxy:                 nil, // IMDS is link-local: never through an HTTP proxy
				DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConns:          proxyMaxConcurrent,
				MaxIdleConnsPerHost:   proxyMaxConcurrent,
				MaxConnsPerHost:       proxyMaxConcurrent,
				IdleConnTimeout:       90 * time.Second,
				ResponseHeaderTimeout: proxyHeaderTimeout,
			},
			sem: make(chan struct{}, proxyMaxConcurrent), wait: proxySlotWait,
			busy: fmt.Errorf("%w (%d requests in flight for %s)", errProxyBusy, proxyMaxConcurrent, proxySlotWait),
		},
		limits: newPodLimiter(proxyPodRate, proxyPodBurst),
		swept:  time.Now(),
	}
}

// RoundTrip charges the calling pod (when serveProxy named one), then waits for a slot, held
// until the answer's body is closed.
func (t *proxyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if p, _ := r.Context().Value(proxyPodKey{}).(*podInfo); p != nil {
		if err := t.limits.allow(p); err != nil {
			return nil, err
		}
		t.sweep(time.Now())
	}
	return t.next.RoundTrip(r)
}

// sweep drops limiters that have refilled to their burst: they are indistinguishable from new
// ones, and pods that left the node must not keep an entry each.
func (t *proxyTransport) sweep(now time.Time) {
	l := t.limits
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(t.swept) < proxyLimiterSweep {
		return
	}
	t.swept = now
	for uid, lim := range l.m {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.m, uid)
		}
	}
}
