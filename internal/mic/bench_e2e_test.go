package mic_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"k8s.io/client-go/kubernetes"
)

var fullShape = flag.Bool("mic.full", false, "BenchmarkEndToEnd: the issue's full shape (2,000 pods, 3 VMSS x 10 instances, 100 identities, PATCH 2 s VM / 5 s VMSS) instead of a small one")

// BenchmarkEndToEnd creates pods, identities and bindings at once against envtest + the
// emulator and reports the time until every AAI is Assigned, ARM reads/writes and kube writes.
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) go test ./internal/mic -run '^$' -bench EndToEnd -benchtime 1x -mic.full
func BenchmarkEndToEnd(b *testing.B) {
	pods, vmss, perVMSS, ids := 200, 3, 2, 10
	timing := emulator.FastTiming()
	if *fullShape {
		pods, vmss, perVMSS, ids = 2000, 3, 10, 100
		timing = emulator.Timing{VMOperation: emulator.D(2 * time.Second), VMSSOperation: emulator.D(5 * time.Second)}
	}
	for b.Loop() {
		runE2E(b, pods, vmss, perVMSS, ids, timing, false)
	}
}

// BenchmarkEndToEndBinary is BenchmarkEndToEnd with MIC as the real cmd/mic binary in a
// subprocess (default flags: 1 s batch idle, 10 s batch max, 1 s ARM polling), so that
// mic-RSS-MiB is MIC's own memory, not the test process's (which holds the emulator, the test
// clients and their caches too).
//
//	KUBEBUILDER_ASSETS=$(hack/control-plane.sh) go test ./internal/mic -run '^$' -bench EndToEndBinary -benchtime 1x -mic.full
func BenchmarkEndToEndBinary(b *testing.B) {
	pods, vmss, perVMSS, ids := 200, 3, 2, 10
	timing := emulator.FastTiming()
	if *fullShape {
		pods, vmss, perVMSS, ids = 2000, 3, 10, 100
		timing = emulator.Timing{VMOperation: emulator.D(2 * time.Second), VMSSOperation: emulator.D(5 * time.Second)}
	}
	for b.Loop() {
		runE2E(b, pods, vmss, perVMSS, ids, timing, true)
	}
}

func runE2E(b *testing.B, pods, vmss, perVMSS, nids int, timing emulator.Timing, binary bool) {
	cfg := emulator.Config{Timing: timing}
	for i := 0; i < vmss; i++ {
		cfg.VirtualMachineScaleSets = append(cfg.VirtualMachineScaleSets, emulator.VMSSConfig{Name: fmt.Sprintf("pool%d", i), Instances: perVMSS})
	}
	for i := 0; i < nids; i++ {
		cfg.UserAssignedIdentities = append(cfg.UserAssignedIdentities, emulator.IdentityConfig{Name: fmt.Sprintf("id%d", i)})
	}
	w := newWorldTB(b, cfg)
	var nodes []string
	for i := 0; i < vmss; i++ {
		for j := 0; j < perVMSS; j++ {
			nodes = append(nodes, w.vmssNode(fmt.Sprintf("pool%d", i), j))
		}
	}
	var micPID int
	if binary {
		micPID = w.startMICBinary(b)
	} else {
		p := w.startMIC(micOpts{})
		// Wait for the leader before the clock starts.
		for p.controller() == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	kubeWrites0 := apiserverWrites()
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := 0; i < nids; i++ {
		w.identity(fmt.Sprintf("id%d", i))
		w.binding(fmt.Sprintf("b%d", i), fmt.Sprintf("id%d", i), fmt.Sprintf("s%d", i))
	}
	for i := 0; i < pods; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			w.pod(fmt.Sprintf("p%d", i), nodes[i%len(nodes)], fmt.Sprintf("s%d", i%nids))
		}()
	}
	wg.Wait()
	created := time.Since(start)
	for {
		got := w.aais()
		n := 0
		for _, s := range got {
			if s == aadv1.AssignedIDAssigned {
				n++
			}
		}
		if n == pods {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	elapsed := time.Since(start)
	kubeWrites := apiserverWrites() - kubeWrites0
	armW := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Kind: "write"})
	armR := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Kind: "read"})
	polls := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpOperationGet})
	b.ReportMetric(elapsed.Seconds(), "s-all-assigned")
	b.ReportMetric(created.Seconds(), "s-objects-created")
	// What MIC controls: creating 2,000 pods through one apiserver takes most of the run, and
	// MIC works while they arrive; this is the tail after the last one.
	b.ReportMetric((elapsed - created).Seconds(), "s-last-pod-to-all-assigned")
	b.ReportMetric(float64(armW), "arm-writes")
	b.ReportMetric(float64(armR-polls), "arm-reads")
	b.ReportMetric(float64(polls), "arm-lro-polls")
	b.ReportMetric(float64(kubeWrites), "kube-writes")
	if binary {
		b.ReportMetric(float64(rssOf(b, fmt.Sprintf("/proc/%d/status", micPID))), "mic-RSS-MiB")
	} else {
		b.ReportMetric(float64(rssMiB()), "process-RSS-MiB")
	}
	// Quiet period: no ARM call without changes (reconcile interval is 3 min).
	quiet := 5 * time.Second
	if *fullShape {
		quiet = 2 * time.Minute
	}
	before := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM})
	time.Sleep(quiet)
	b.ReportMetric(float64(w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM})-before), "arm-calls-quiet")
}

// apiserverWrites reads the apiserver's own request counter for mutating verbs.
func apiserverWrites() int64 {
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return -1
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		return -1
	}
	body := string(raw)
	var total int64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		if !(strings.Contains(line, `verb="POST"`) || strings.Contains(line, `verb="PUT"`) || strings.Contains(line, `verb="PATCH"`) || strings.Contains(line, `verb="DELETE"`)) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		total += int64(v)
	}
	return total
}

// rssOf reads VmRSS (MiB) from a /proc/<pid>/status file.
func rssOf(b *testing.B, status string) int64 {
	raw, err := os.ReadFile(status)
	if err != nil {
		b.Fatalf("reading MIC's memory use: %v", err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb >> 10
		}
	}
	b.Fatalf("no VmRSS in %s", status)
	return -1
}

func rssMiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.Sys >> 20)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return kb >> 10
		}
	}
	return -1
}
