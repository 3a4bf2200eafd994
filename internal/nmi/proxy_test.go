package nmi

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// standInIMDS plays IMDS on 127.0.0.1: it answers every path 200 (so that only NMI can refuse),
// the token path with a token, and can hold /metadata/instance requests open.
type standInIMDS struct {
	hits      atomic.Int32
	mu        sync.Mutex
	paths     []string
	held      atomic.Int32
	hold      chan struct{} // non-nil: /metadata/instance waits for it
	switch101 bool          // answer /metadata/versions with 101 Switching Protocols
}

func (f *standInIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.hits.Add(1)
	f.mu.Lock()
	f.paths = append(f.paths, r.URL.Path)
	f.mu.Unlock()
	switch {
	case r.URL.Path == "/metadata/identity/oauth2/token":
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"a.b.c","expires_on":"`+strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)+`","resource":"`+armResource+`","token_type":"Bearer"}`)
	case f.switch101 && r.URL.Path == "/metadata/versions":
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tunnel\r\n\r\n")
		_ = rw.Flush()
		_, _ = io.Copy(conn, conn) // echo: a tunnel, if NMI opened one
	case f.hold != nil && strings.HasPrefix(r.URL.Path, "/metadata/instance"):
		f.held.Add(1)
		select {
		case <-f.hold:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusOK)
	default:
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"path":"`+r.URL.Path+`"}`)
	}
}

// proxyRig is NMI's server over a store filled by hand (no watch) and a stand-in IMDS.
type proxyRig struct {
	t     *testing.T
	imds  *standInIMDS
	srv   *Server
	store *Store
	url   string
}

func newProxyRig(t *testing.T, imds *standInIMDS, cfg func(*Config)) *proxyRig {
	t.Helper()
	up := httptest.NewServer(imds)
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	port, _ := strconv.Atoi(u.Port())
	c := Config{NodeName: "proxy-node", MetadataIP: "127.0.0.1", MetadataPort: port, MetadataHeaderRequired: true,
		PodWaitTimeout: 50 * time.Millisecond, RetryAttemptsForCreated: 1, RetryAttemptsForAssigned: 1,
		FindIdentityRetryInterval: 50 * time.Millisecond, PodRateLimit: 20, PodRateBurst: 40}
	if cfg != nil {
		cfg(&c)
	}
	store := NewStore()
	srv := NewServer(c, store, nil, NewMetrics(nil), testr.NewWithOptions(t, testr.Options{Verbosity: 1}))
	nmi := httptest.NewServer(srv)
	t.Cleanup(nmi.Close)
	if imds.hold != nil {
		// Cleanups run last-registered first: held requests are released before either server
		// waits for its handlers to return.
		t.Cleanup(func() { close(imds.hold) })
	}
	return &proxyRig{t: t, imds: imds, srv: srv, store: store, url: nmi.URL}
}

// pod adds a running pod with a fresh loopback IP and returns the IP.
func (r *proxyRig) pod(name string, labels map[string]string) string {
	ip := nextPodIP()
	r.store.UpsertPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "proxy", Name: name, UID: types.UID("uid-" + name + "-" + ip), Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "proxy-node"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	})
	return ip
}

// do sends method pathQuery from ip with the Metadata header plus hdr, and body if non-empty.
func (r *proxyRig) do(ip, method, pathQuery string, hdr map[string]string, body string) answer {
	r.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, r.url+pathQuery, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Metadata", "true")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := podClient(ip).Do(req)
	if err != nil {
		r.t.Fatalf("%s %s from %s: %v", method, pathQuery, ip, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}
}

// Only the documented IMDS API paths reach IMDS; anything else is NMI's own 404 naming them.
func TestProxyForwardsOnlyIMDSPaths(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{}, nil)
	ip := rig.pod("app", nil)
	for _, p := range []string{
		"/metadata/instance?api-version=2021-02-01", "/metadata/instance/", "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
		"/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress", "/metadata/attested/document?api-version=2020-09-01",
		"/metadata/scheduledevents?api-version=2020-07-01", "/metadata/loadbalancer?api-version=2020-10-01", "/metadata/versions",
		"/metadata/identity/info?api-version=2018-02-01",
	} {
		before := rig.imds.hits.Load()
		wantStatus(t, rig.do(ip, "GET", p, nil, ""), 200)
		if rig.imds.hits.Load() != before+1 {
			t.Errorf("%s was not forwarded", p)
		}
	}
	for _, p := range []string{
		"/doesnotexist", "/", "/latest/meta-data/iam/security-credentials/", "/computeMetadata/v1/", "/metadata", "/metadata/",
		"/Metadata/instance", "/metadata//instance", "/metadata/instance/compute/../../versions", "/metadata/instance%2Fcompute",
		"/metadata/instance/comp%75te", "/metadata/instance/compute.json", "/metadata/attested/document/extra", "/metadata/scheduledeventsx",
		"/metadata/identity", "/metadata/identity/infox", "/metadata/THROTTLE",
	} {
		a := rig.do(ip, "GET", p, nil, "")
		wantStatus(t, a, 404)
		m := a.json(t)
		if desc, _ := m["error_description"].(string); m["error"] != "not_found" || !strings.Contains(desc, "/metadata/instance") || !strings.Contains(desc, "/metadata/scheduledevents") {
			t.Errorf("%s: 404 does not name the allowed paths: %s", p, a.body)
		}
	}
	rig.imds.mu.Lock()
	defer rig.imds.mu.Unlock()
	if len(rig.imds.paths) != 9 {
		t.Errorf("IMDS saw %d requests, want the 9 allowed ones: %q", len(rig.imds.paths), rig.imds.paths)
	}
}

// --block-instance-metadata keeps /metadata/instance away from IMDS; the other APIs still pass.
func TestProxyBlockInstanceMetadata(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{}, func(c *Config) { c.BlockInstanceMetadata = true })
	ip := rig.pod("app", nil)
	wantStatus(t, rig.do(ip, "GET", "/metadata/instance/compute", nil, ""), 403)
	wantStatus(t, rig.do(ip, "GET", "/metadata/versions", nil, ""), 200)
	if n := rig.imds.hits.Load(); n != 1 {
		t.Errorf("IMDS saw %d requests, want 1", n)
	}
	if desc := string(rig.do(ip, "GET", "/nope", nil, "").body); strings.Contains(desc, "/metadata/instance") {
		t.Errorf("with blocking on, the 404 lists /metadata/instance: %s", desc)
	}
}

// Only GET, without a body and without a protocol upgrade, is forwarded.
func TestProxyRefusesMethodsBodiesAndUpgrades(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{}, nil)
	ip := rig.pod("app", nil)
	const p = "/metadata/instance?api-version=2021-02-01"
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"} {
		a := rig.do(ip, m, p, nil, "")
		wantStatus(t, a, 405)
		if got := a.header.Get("Allow"); got != "GET" {
			t.Errorf("%s: Allow %q, want GET", m, got)
		}
	}
	cases := []struct {
		name string
		hdr  map[string]string
		body string
		code string
	}{
		{"body", nil, strings.Repeat("x", 100), "body_not_allowed"},
		{"websocket upgrade", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, "", "upgrade_not_allowed"},
		{"upgrade token among others", map[string]string{"Connection": "keep-alive, upgrade", "Upgrade": "h2c"}, "", "upgrade_not_allowed"},
		{"Upgrade header alone", map[string]string{"Upgrade": "tunnel"}, "", "upgrade_not_allowed"},
		{"oversized query", nil, "", "invalid_request"},
	}
	for _, c := range cases {
		pq := p
		if c.name == "oversized query" {
			pq += "&x=" + strings.Repeat("a", 5000)
		}
		a := rig.do(ip, "GET", pq, c.hdr, c.body)
		wantStatus(t, a, 400)
		if got := a.json(t)["error"]; got != c.code {
			t.Errorf("%s: error %v, want %s: %s", c.name, got, c.code, a.body)
		}
	}
	if n := rig.imds.hits.Load(); n != 0 {
		t.Errorf("IMDS saw %d refused requests", n)
	}
}

// A 101 from IMDS is never passed on: no tunnel through NMI.
func TestProxyRefusesUpstreamProtocolSwitch(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{switch101: true}, nil)
	a := rig.do(rig.pod("app", nil), "GET", "/metadata/versions", nil, "")
	wantStatus(t, a, 502)
}

// Callers that are no pod of this node get 404, as on the token path, and IMDS sees nothing.
func TestProxyUnknownCaller(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{}, nil)
	a := rig.do("127.1.255.253", "GET", "/metadata/instance?api-version=2021-02-01", nil, "")
	wantStatus(t, a, 404)
	if got := a.json(t)["error"]; got != "pod_not_found" {
		t.Errorf("error %v, want pod_not_found: %s", got, a.body)
	}
	if n := rig.imds.hits.Load(); n != 0 {
		t.Errorf("IMDS saw %d requests from an unknown caller", n)
	}
}

// Each pod has its own budget of proxied requests: one pod polling hard is refused 429 with
// Retry-After, and another pod is still served.
func TestProxyPerPodRateLimit(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{}, nil)
	noisy, quiet := rig.pod("noisy", nil), rig.pod("quiet", nil)
	const p = "/metadata/instance?api-version=2021-02-01"
	limited := 0
	for i := 0; i < 3*proxyPodBurst; i++ {
		a := rig.do(noisy, "GET", p, nil, "")
		if a.status == http.StatusTooManyRequests {
			limited++
			if ra, _ := strconv.Atoi(a.header.Get("Retry-After")); ra < 1 {
				t.Errorf("429 without Retry-After: %v", a.header)
			}
			if !strings.Contains(string(a.body), "proxy/noisy") {
				t.Errorf("429 does not name the pod: %s", a.body)
			}
			continue
		}
		wantStatus(t, a, 200)
	}
	if limited < proxyPodBurst {
		t.Errorf("%d of %d rapid requests were refused, want at least %d", limited, 3*proxyPodBurst, proxyPodBurst)
	}
	wantStatus(t, rig.do(quiet, "GET", p, nil, ""), 200)
}

// Proxied requests that IMDS holds open take only the proxy's own slots: NMI's token fetches,
// on their own transport, still get through, and excess proxied requests are answered 503.
func TestProxyCannotStarveTokenFetches(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{hold: make(chan struct{})}, nil)
	const n = proxyMaxConcurrent + 4
	answers := make(chan answer, n)
	for i := range n {
		ip := rig.pod("poller-"+strconv.Itoa(i), nil)
		go func() { answers <- rig.do(ip, "GET", "/metadata/instance?api-version=2021-02-01", nil, "") }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for rig.imds.held.Load() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let the proxy take every slot it will take

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rig.srv.imds.base+"/metadata/identity/oauth2/token?api-version=2018-02-01&resource="+url.QueryEscape(armResource), nil)
	req.Header.Set("Metadata", "true")
	resp, err := rig.srv.imds.client.Do(req)
	if err != nil {
		t.Fatalf("token fetch while %d proxied requests are held: %v (the proxy starves token fetches)", rig.imds.held.Load(), err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("token fetch: %d", resp.StatusCode)
	}
	t.Logf("token fetch took %s with %d proxied requests held", time.Since(start), rig.imds.held.Load())
	if h := rig.imds.held.Load(); h > proxyMaxConcurrent {
		t.Errorf("IMDS holds %d proxied requests, more than the proxy's %d slots", h, proxyMaxConcurrent)
	}
	busy := 0
	for range n - proxyMaxConcurrent {
		a := <-answers
		if a.status == http.StatusServiceUnavailable && a.header.Get("Retry-After") != "" && a.json(t)["error"] == "proxy_busy" {
			busy++
		}
	}
	if busy != n-proxyMaxConcurrent {
		t.Errorf("%d of the %d requests beyond the proxy's slots were answered 503 proxy_busy", busy, n-proxyMaxConcurrent)
	}
}

// Excepted pods' token passthrough goes through the same request checks.
func TestPassthroughRefusesUpgradeAndBody(t *testing.T) {
	rig := newProxyRig(t, &standInIMDS{}, nil)
	rig.store.UpsertException(&aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: "proxy", Name: "exc"},
		Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "agent"}}})
	ip := rig.pod("agent", map[string]string{"app": "agent"})
	tp := tokenPath(armResource)
	wantStatus(t, rig.do(ip, "GET", tp, nil, ""), 200)
	if n := rig.imds.hits.Load(); n != 1 {
		t.Fatalf("passthrough did not reach IMDS (%d requests)", n)
	}
	wantStatus(t, rig.do(ip, "GET", tp, map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}, ""), 400)
	wantStatus(t, rig.do(ip, "GET", tp, nil, "body"), 400)
	if n := rig.imds.hits.Load(); n != 1 {
		t.Errorf("IMDS saw %d requests, want only the first", n)
	}
}

func TestAllowedIMDSPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/metadata/instance": true, "/metadata/instance/": true, "/metadata/instance/compute/tagsList": true,
		"/metadata/versions/": true, "/metadata/instance/a.b": false, "/metadata/instance//compute": false,
		"/metadata/instance/./compute": false, "": false, "metadata/versions": false, "/metadata/instance/compute%00": false,
	} {
		if got := allowedIMDSPath(p, "", false); got != want {
			t.Errorf("allowedIMDSPath(%q) = %v, want %v", p, got, want)
		}
	}
	if allowedIMDSPath("/metadata/instance/compute", "/metadata/instance%2Fcompute", false) {
		t.Error("a percent-encoded path was allowed")
	}
	if allowedIMDSPath("/metadata/instance", "", true) {
		t.Error("/metadata/instance allowed with blocking on")
	}
}
