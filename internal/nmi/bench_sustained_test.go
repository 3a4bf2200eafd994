package nmi

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// sustainedFor is how long BenchmarkSustained runs each case: NMI_BENCH_SUSTAINED (a Go
// duration; `make bench-nmi` sets 60s, issue 5's figure), else 5s so that a plain
// `go test -bench` stays short.
func sustainedFor(b *testing.B) time.Duration {
	v := os.Getenv("NMI_BENCH_SUSTAINED")
	if v == "" {
		return 5 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second {
		b.Fatalf("NMI_BENCH_SUSTAINED=%q: use a Go duration of at least 1s, e.g. 60s", v)
	}
	return d
}

// countingListener counts accepted connections: wrapped around the IMDS stand-in it counts the
// TCP connections NMI opens upstream (upstream NMI opened ~0.5 per request and ran out of ports).
type countingListener struct {
	net.Listener
	accepts atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

// sustainedSlices is how many equal time slices a sustained run is cut into to show decay.
const sustainedSlices = 6

// BenchmarkSustained runs c=8 for a fixed time (not a request count) and reports req/s per time
// slice, the ratio of the slowest slice to the fastest (1.0 = no decay) and the new TCP
// connections NMI opened to the IMDS stand-in during the run. Two cases: "cached" (the answer is
// NMI's cached token; IMDS is not called at all) and "passthrough" (an exception pod: every
// request is forwarded to IMDS, as upstream did for every pod).
func BenchmarkSustained(b *testing.B) {
	dur := sustainedFor(b)
	cl := &countingListener{}
	h, ps := benchNodeOpts(b, 1, harnessOpts{wrapIMDS: func(ln net.Listener) net.Listener { cl.Listener = ln; return cl }})
	id, _ := h.emu.Identity("bench")
	env.Create(b, &aadv1.AzurePodIdentityException{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: "bench-exc"},
		Spec: aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "passthrough"}}})
	exc := h.pod("exc", "", map[string]string{"app": "passthrough"})
	h.waitStore("exception and pod", func(s *Store) bool {
		return len(s.exceptions[h.ns]) == 1 && s.podsByKey[h.ns+"/exc"] != nil
	})
	cases := []struct {
		name string
		pod  *corev1.Pod
	}{{"cached", ps[0]}, {"passthrough", exc}}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/c=8/%s", c.name, dur), func(b *testing.B) {
			target := "http://" + h.addr + tokenPath(armResource, "client_id", id.ClientID)
			sustained(b, c.pod.Status.PodIP, target, 8, dur, cl)
		})
	}
}

// sustained is a closed loop of c keep-alive workers from ip for dur; every answer must be 200.
func sustained(b *testing.B, ip, target string, c int, dur time.Duration, upstream *countingListener) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: c, MaxConnsPerHost: c}}
	defer hc.CloseIdleConnections()
	one := func() error {
		req, _ := http.NewRequest(http.MethodGet, target, nil)
		req.Header.Set("Metadata", "true")
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
	for range 200 { // warm-up: token cached, connections up
		if err := one(); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	var perSlice [sustainedSlices]atomic.Int64
	slice := dur / sustainedSlices
	lat := make([][]time.Duration, c)
	var failed atomic.Value
	var wg sync.WaitGroup
	conns0 := upstream.accepts.Load()
	b.ResetTimer()
	start := time.Now()
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				t0 := time.Now()
				k := int(t0.Sub(start) / slice)
				if k >= sustainedSlices {
					return
				}
				if err := one(); err != nil {
					failed.Store(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				perSlice[k].Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("request failed: %v", err)
	}
	newConns := upstream.accepts.Load() - conns0
	all := slices.Concat(lat...)
	slices.Sort(all)
	rates := make([]float64, sustainedSlices)
	for i := range perSlice {
		rates[i] = float64(perSlice[i].Load()) / slice.Seconds()
	}
	lo, hi := slices.Min(rates), slices.Max(rates)
	line := ""
	for i, r := range rates {
		line += fmt.Sprintf(" [%s-%s] %.0f", slice*time.Duration(i), slice*time.Duration(i+1), r)
	}
	b.Logf("req/s per slice:%s; new upstream IMDS connections: %d for %d requests", line, newConns, len(all))
	b.ReportMetric(float64(len(all))/el.Seconds(), "req/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(all[len(all)-1].Microseconds()), "max-µs")
	b.ReportMetric(lo/hi, "slowest/fastest-slice")
	// Decay shows as a falling trend; on a shared machine single slices also vary with others' load.
	b.ReportMetric(rates[sustainedSlices-1]/rates[0], "last/first-slice")
	b.ReportMetric(float64(newConns), "imds-new-conns")
	b.ReportMetric(float64(newConns)*1000/float64(len(all)), "imds-conns/1k-req")
}
