package emulator

import (
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// BenchmarkIMDSToken measures cached IMDS token answers over loopback HTTP with keep-alive,
// limits and latency off: the emulator overhead later benchmarks subtract.
func BenchmarkIMDSToken(b *testing.B) {
	e, err := New(Config{VirtualMachines: []VMConfig{{Name: "vm", UserAssignedIdentities: []string{"id"}}},
		UserAssignedIdentities: []IdentityConfig{{Name: "id"}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Start(); err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	u, err := e.StartIMDS("vm", "")
	if err != nil {
		b.Fatal(err)
	}
	u += tokPath
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	benchGET(b, client, u, "Metadata", "true")
}

// BenchmarkARMGetVM measures authenticated VM GETs over loopback HTTPS (throttling off).
func BenchmarkARMGetVM(b *testing.B) {
	e, err := New(Config{VirtualMachines: []VMConfig{{Name: "vm", UserAssignedIdentities: []string{"id"}}},
		UserAssignedIdentities: []IdentityConfig{{Name: "id"}},
		ServicePrincipals:      []PrincipalConfig{{AppID: testApp, Secrets: []string{testSecret}}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Start(); err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	cred, _ := e.PrincipalCredential(testApp)
	tok, err := cred.GetToken(b.Context(), armScope)
	if err != nil {
		b.Fatal(err)
	}
	u := e.ARMURL() + VMID(e.Config().SubscriptionID, e.Config().ResourceGroup, "vm") + "?api-version=2026-04-01"
	client := e.HTTPClient()
	benchGET(b, client, u, "Authorization", "Bearer "+tok.Token)
}

// benchGET sends GET u with one header from 8 goroutines per core, checks every answer is 200,
// and reports requests/s and CPU per request.
func benchGET(b *testing.B, client *http.Client, u, header, value string) {
	b.SetParallelism(8)
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set(header, value)
		for pb.Next() {
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	el, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer() // Close waits for idle connections; keep it out of ns/op
	b.ReportMetric(float64(b.N)/el.Seconds(), "req/s")
	// CPU per request (client + server, this process) is steadier than req/s on a shared box:
	// 2 idle cores give about 2 s / cpu-µs-per-req requests per second.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/req")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
