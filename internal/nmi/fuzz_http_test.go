package nmi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/http/httpguts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// Raw HTTP requests, parsed as NMI's server parses them: the proxy filter and the whole handler
// (the token-path parsers are in fuzz_test.go).
// fzNode is one NMI server over a store with one unbound pod, and a stand-in IMDS on loopback
// that notes the first request it should never have received.
var fzNode struct {
	once sync.Once
	srv  *Server
	mu   sync.Mutex
	bad  string
}

const fzPodIP = "127.1.250.9"

func fzServer(t *testing.T) *Server {
	fzNode.once.Do(func() {
		imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !fzAllowedPath(r.URL, false) || r.Header.Get("Upgrade") != "" || r.Header.Get("Connection") != "" {
				fzNode.mu.Lock()
				fzNode.bad = fmt.Sprintf("%s %q %v", r.Method, r.URL.RequestURI(), r.Header)
				fzNode.mu.Unlock()
			}
			_, _ = io.WriteString(w, "{}")
		}))
		u, _ := url.Parse(imds.URL)
		port, _ := strconv.Atoi(u.Port())
		st := NewStore()
		st.UpsertPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web", UID: "u1"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fzPodIP}})
		fzNode.srv = NewServer(Config{NodeName: "fz", MetadataIP: "127.0.0.1", MetadataPort: port, MetadataHeaderRequired: true,
			PodWaitTimeout: time.Millisecond}, st, nil, NewMetrics(nil), logr.Discard())
		fzNode.srv.proxy.Transport.(*proxyTransport).limits = newPodLimiter(0, 0) // no budget: every input gets through
	})
	fzNode.mu.Lock()
	fzNode.bad = ""
	fzNode.mu.Unlock()
	return fzNode.srv
}

// FuzzServeHTTP sends raw HTTP requests through NMI's whole handler (path routing, Metadata
// header, token query, /host/token headers, proxy filter): no panic, JSON answers, the header
// check first, and the stand-in IMDS sees only allow-listed GETs, never the token path.
func FuzzServeHTTP(f *testing.F) {
	fzNoControlPlane()
	for _, s := range []string{
		"GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n",
		"GET /metadata/identity/oauth2/token?resource=x HTTP/1.1\r\nHost: x\r\nMetadata: True\r\n\r\n",
		"GET /metadata/identity/oauth2/token/?resource=x&client_id=a&client_id=b HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n",
		"GET /Metadata/identity/oauth2/token?resource=x HTTP/1.1\r\nHost: x\r\nMetadata: false\r\nMetadata: true\r\n\r\n",
		"GET /metadata/identity%2Foauth2/token HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n",
		"GET /host/token?resource=x HTTP/1.1\r\nHost: x\r\npodname: web\r\npodns: app\r\n\r\n",
		"GET /host/token?resource=x HTTP/1.1\r\nHost: x\r\npodname: web/x\r\npodns: app\r\n\r\n",
		"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n",
		"GET /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
		"DELETE /metadata/instance HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(1))
	}
	f.Add([]byte("GET /host/token?resource=x HTTP/1.1\r\nHost: x\r\npodname: web\r\npodns: app\r\n\r\n"), uint8(0))
	f.Fuzz(func(t *testing.T, raw []byte, from uint8) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		r.RemoteAddr = []string{"127.0.0.1:40000", fzPodIP + ":40000", "127.1.250.10:40000"}[from%3]
		srv := fzServer(t)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		body := w.Body.Bytes()
		fzNode.mu.Lock()
		bad := fzNode.bad
		fzNode.mu.Unlock()
		route := imdsreq.Classify(r.URL.Path, r.URL.RawPath, false)
		switch {
		case w.Code == http.StatusInternalServerError:
			t.Fatalf("500 for %q: %s", raw, body)
		case !json.Valid(body):
			t.Fatalf("answer is not JSON: %q", body)
		case bad != "":
			t.Fatalf("IMDS received %s", bad)
		case route == imdsreq.RouteToken && r.Method == http.MethodGet && r.Header.Get("Metadata") != "true" && w.Code != http.StatusBadRequest:
			t.Fatalf("token request without Metadata: true answered %d", w.Code)
		case route == imdsreq.RouteToken && w.Code == http.StatusOK:
			t.Fatalf("token for an unbound pod: %s", body)
		case route == imdsreq.RouteHostToken && from%3 != 0 && w.Code != http.StatusForbidden:
			t.Fatalf("/host/token from %s answered %d", r.RemoteAddr, w.Code)
		}
	})
}

// fzAllowedPath is an independent reading of the proxy's allow-list.
func fzAllowedPath(u *url.URL, block bool) bool {
	p := u.EscapedPath()
	if strings.HasSuffix(p, "/") && len(p) > 1 {
		p = p[:len(p)-1]
	}
	for _, a := range proxyExactPaths {
		if p == a {
			return true
		}
	}
	sub, ok := strings.CutPrefix(p, "/metadata/instance")
	if block || !ok || (sub != "" && sub[0] != '/') {
		return false
	}
	for _, seg := range strings.Split(sub, "/")[1:] {
		if seg == "" || seg == "." || seg == ".." || strings.Trim(seg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			return false
		}
	}
	return true
}

// FuzzProxyFilter parses raw HTTP requests as NMI's server does and checks what the proxy's
// filter lets through: GET only, no body, no protocol upgrade, only allow-listed paths.
func FuzzProxyFilter(f *testing.F) {
	fzNoControlPlane()
	for _, s := range []string{
		"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n",
		"GET /metadata/instance/compute/vmId/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /metadata/scheduledevents HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET /metadata/versions HTTP/1.1\r\nHost: x\r\nconnection: UPGRADE\r\n\r\n",
		"POST /metadata/attested/document HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
		"GET /metadata/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /metadata/instance/../identity/oauth2/token HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /metadata/instance%2F..%2Fidentity HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET //metadata/instance HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://169.254.169.254/metadata/loadbalancer HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /metadata/identity/info HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("GET /metadata/instance/network HTTP/1.1\r\nHost: x\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, raw []byte, block bool) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		if checkProxyRequest(r) != nil || !allowedIMDSPath(r.URL.Path, r.URL.RawPath, block) {
			return
		}
		switch {
		case r.Method != http.MethodGet:
			t.Fatalf("forwards method %q", r.Method)
		case r.ContentLength != 0 || len(r.TransferEncoding) != 0:
			t.Fatalf("forwards a body (%d, %v)", r.ContentLength, r.TransferEncoding)
		case httpguts.HeaderValuesContainsToken(r.Header["Connection"], "Upgrade") || r.Header.Get("Upgrade") != "":
			t.Fatalf("forwards an upgrade: %v", r.Header)
		case !fzAllowedPath(r.URL, block):
			t.Fatalf("forwards path %q (raw %q, block %v)", r.URL.Path, r.URL.RawPath, block)
		}
	})
}
