package nmi

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// Benchmarks measure NMI the way upstream's v1.8.17 was measured (azure-wire-formats.md §B.4):
// a closed-loop keep-alive client bound to the pod's IP calls NMI's listener on loopback, c
// workers, every answer checked for 200; "direct" sends the same client to the emulator's IMDS
// (the floor). Run `make bench-nmi` for every figure as a table (60 s sustained runs), or
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) go test ./internal/nmi -run '^$' -bench .
//
// (sustained runs then last NMI_BENCH_SUSTAINED, default 5s; BenchmarkRSS is in bench_rss_test.go).
// Reported: req/s, p50/p99 in µs, and process CPU per request (client + NMI + emulator together).

type loadResult struct {
	p50, p99 time.Duration
	rps      float64
	cpuPerOp time.Duration
}

// load sends n requests with c workers from ip to url; every answer must be 200.
func load(b *testing.B, ip, target string, hdr http.Header, c, n int, urlFor func(i int) string) loadResult {
	b.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: c, MaxConnsPerHost: c}}
	defer hc.CloseIdleConnections()
	one := func(i int) error {
		u := target
		if urlFor != nil {
			u = urlFor(i)
		}
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header = hdr
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for i := range min(200, n) { // warm-up (and connection set-up)
		if err := one(-1 - i); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	lat := make([][]time.Duration, c)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := one(i); err != nil {
					failed.Store(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("request failed: %v", err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(n)
	r := loadResult{p50: all[len(all)/2], p99: all[len(all)*99/100], rps: float64(n) / el.Seconds(), cpuPerOp: cpu}
	b.ReportMetric(r.rps, "req/s")
	b.ReportMetric(float64(r.p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(r.cpuPerOp.Microseconds()), "cpu-µs/req")
	return r
}

// benchNode builds a node with pods pods, each bound and assigned to one identity.
func benchNode(b *testing.B, pods int, imdsLatency time.Duration) (*harness, []*corev1.Pod) {
	return benchNodeOpts(b, pods, harnessOpts{timing: emulator.Timing{IMDSLatency: emulator.D(imdsLatency)}})
}

// benchNodeOpts is benchNode with further harness options (identity "bench", no rate limit).
func benchNodeOpts(b *testing.B, pods int, o harnessOpts) (*harness, []*corev1.Pod) {
	o.identities = []string{"bench"}
	o.cfg = func(c *Config) { c.PodRateLimit = 0; c.FindIdentityRetryInterval = time.Second }
	h := newHarness(b, o)
	id := h.identity("bench")
	h.binding("bench", "bench")
	var out []*corev1.Pod
	for i := range pods {
		p := h.pod(fmt.Sprintf("p%d", i), "bench", nil)
		h.assign(p, id, aadv1.AssignedIDAssigned)
		out = append(out, p)
	}
	h.waitStore("all assignments", func(s *Store) bool { return len(s.aaiByKey) >= pods })
	return h, out
}

func BenchmarkCached(b *testing.B) {
	for _, pods := range []int{1, 20, 200} {
		for _, lat := range []time.Duration{0, 10 * time.Millisecond} {
			if pods > 1 && lat > 0 {
				continue
			}
			h, ps := benchNode(b, pods, lat)
			pod := ps[len(ps)-1]
			for _, c := range []int{1, 8} {
				b.Run(fmt.Sprintf("pods=%d/imds=%s/c=%d", pods, lat, c), func(b *testing.B) {
					load(b, pod.Status.PodIP, "http://"+h.addr+tokenPath(armResource), http.Header{"Metadata": {"true"}}, c, max(b.N, 1000), nil)
				})
			}
		}
	}
}

// BenchmarkCachedFederated is BenchmarkCached's pods=1/imds=0s case for a federated identity
// (bound by label, no assignment): compare the two in one run for the cost of the federated
// cached path, e.g. go test -run '^$' -bench 'BenchmarkCached(Federated)?$' ./internal/nmi.
func BenchmarkCachedFederated(b *testing.B) {
	iss, err := env.PublishIssuer(testenv.Context(b))
	if err != nil {
		b.Fatal(err)
	}
	h := newHarness(b, harnessOpts{identities: []string{"bench"}, cfg: func(c *Config) { c.PodRateLimit = 0 }})
	if err := h.emu.TrustIssuerCA(iss.CAPEM); err != nil {
		b.Fatal(err)
	}
	h.fedIdentity("bench", aadv1.Federation{})
	h.fic("bench", iss, h.ns, "bench")
	h.binding("bench", "bench")
	pod := h.saPod(h.ns, "p0", "bench", "bench")
	h.waitBound(pod)
	for _, c := range []int{1, 8} {
		b.Run(fmt.Sprintf("pods=1/c=%d", c), func(b *testing.B) {
			load(b, pod.Status.PodIP, "http://"+h.addr+tokenPath(armResource), http.Header{"Metadata": {"true"}}, c, max(b.N, 1000), nil)
		})
	}
}

// BenchmarkDirect is the floor: the same client straight to the emulator's IMDS.
func BenchmarkDirect(b *testing.B) {
	for _, lat := range []time.Duration{0, 10 * time.Millisecond} {
		h, ps := benchNode(b, 1, lat)
		id, _ := h.emu.Identity("bench")
		base := "http://" + net.JoinHostPort(h.srv.cfg.MetadataIP, fmt.Sprint(h.srv.cfg.MetadataPort))
		for _, c := range []int{1, 8} {
			b.Run(fmt.Sprintf("imds=%s/c=%d", lat, c), func(b *testing.B) {
				load(b, ps[0].Status.PodIP, base+tokenPath(armResource, "client_id", id.ClientID), http.Header{"Metadata": {"true"}}, c, max(b.N, 1000), nil)
			})
		}
	}
}

var missRound atomic.Int64

// BenchmarkMiss: every request asks for a new resource, so each is a cache miss through to IMDS
// (10 ms), compared with the direct call in BenchmarkDirect/imds=10ms/c=1.
func BenchmarkMiss(b *testing.B) {
	h, ps := benchNode(b, 1, 10*time.Millisecond)
	b.Run("imds=10ms/c=1", func(b *testing.B) {
		r := missRound.Add(1)
		load(b, ps[0].Status.PodIP, "", http.Header{"Metadata": {"true"}}, 1, max(b.N, 200), func(i int) string {
			return "http://" + h.addr + tokenPath(fmt.Sprintf("https://r%d-%d.example/", r, i))
		})
	})
}

// BenchmarkDirectMiss is the floor for BenchmarkMiss: new resources straight to IMDS, so the
// emulator mints (signs) a token for each, as it does behind NMI.
func BenchmarkDirectMiss(b *testing.B) {
	h, ps := benchNode(b, 1, 10*time.Millisecond)
	id, _ := h.emu.Identity("bench")
	base := "http://" + net.JoinHostPort(h.srv.cfg.MetadataIP, fmt.Sprint(h.srv.cfg.MetadataPort))
	b.Run("imds=10ms/c=1", func(b *testing.B) {
		r := missRound.Add(1)
		load(b, ps[0].Status.PodIP, "", http.Header{"Metadata": {"true"}}, 1, max(b.N, 200), func(i int) string {
			return base + tokenPath(fmt.Sprintf("https://d%d-%d.example/", r, i), "client_id", id.ClientID)
		})
	})
}

// BenchmarkCachedCatchingUp is BenchmarkCached's pods=1/imds=0s case while a watch is catching up
// (marked interrupted and never re-established here): every cached answer is first confirmed
// with quorum reads of the pod, the binding and the identity. Compare with BenchmarkCached in one
// run for the cost of those 2 s windows: go test -run '^$' -bench 'BenchmarkCached(CatchingUp)?$'.
func BenchmarkCachedCatchingUp(b *testing.B) {
	h, ps := benchNode(b, 1, 0)
	pod := ps[0]
	url := "http://" + h.addr + tokenPath(armResource)
	load(b, pod.Status.PodIP, url, http.Header{"Metadata": {"true"}}, 1, 10, nil) // fill the cache
	h.store.view.interrupted("Pod", nil)
	for _, c := range []int{1, 8} {
		b.Run(fmt.Sprintf("pods=1/c=%d", c), func(b *testing.B) {
			load(b, pod.Status.PodIP, url, http.Header{"Metadata": {"true"}}, c, max(b.N, 1000), nil)
		})
	}
}
