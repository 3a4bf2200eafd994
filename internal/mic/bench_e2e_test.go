package mic_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

var (
	fullShape = flag.Bool("mic.full", false, "BenchmarkEndToEnd: the issue's full shape (2,000 pods, 3 VMSS x 10 instances, 100 identities, PATCH 2 s VM / 5 s VMSS) instead of a small one")
	micArgs   = flag.String("mic.args", "", "BenchmarkEndToEndBinary: extra flags for cmd/mic, space-separated (e.g. \"--v=1\")")
	micLog    = flag.String("mic.log", "", "BenchmarkEndToEndBinary: copy cmd/mic's log to this file when the run ends")
	apiProf   = flag.String("mic.apiserver-cpuprofile", "", "BenchmarkEndToEnd*: write a 15 s CPU profile of kube-apiserver, taken from when the last pod was created, to this file")
	backlog   = flag.Bool("mic.backlog", false, "BenchmarkEndToEnd*: create every object before MIC starts and time from MIC's start, instead of creating them while MIC runs")
	quietFor  = flag.Duration("mic.quiet", 0, "BenchmarkEndToEnd: how long to count ARM calls after all are Assigned (default 2m for the full shape, 5s otherwise)")
)

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
// subprocess (default flags: 1 s batch idle, 5 s batch max, 1 s ARM polling), so that
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
	// What the apiserver needs for the AAI writes on its own: the goal is 1.2 x the VMSS PATCH
	// latency plus this.
	apiserverTime := timeWrites(b, w, pods)
	var bin string
	if binary {
		bin = w.buildMIC(b)
	}
	startMIC := func() micProcess {
		if binary {
			return w.startMICBinary(b, bin)
		}
		p := w.startMIC(micOpts{})
		// Wait for the leader before the clock starts.
		for p.controller() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		return micProcess{}
	}
	createAll := func() {
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
	}
	watcher := watchAssigned(b, w)
	kubeWrites0 := apiserverWrites()
	var micp micProcess
	var start time.Time
	var created time.Duration
	if *backlog {
		// Everything exists when MIC starts (a first install, or a failover with a backlog):
		// the clock runs from MIC's start, which includes its startup and leader election.
		createAll()
		start = time.Now()
		micp = startMIC()
	} else {
		micp = startMIC()
		start = time.Now()
		createAll()
		created = time.Since(start)
	}
	if *apiProf != "" {
		go profileAPIServer(b, *apiProf, 15*time.Second)
	}
	watcher.wait(b, pods)
	elapsed := time.Since(start)
	kubeWrites := apiserverWrites()
	for k, v := range kubeWrites0 {
		kubeWrites[k] -= v
	}
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
	b.ReportMetric(float64(kubeWrites["azureassignedidentities"]), "kube-writes-aai")
	for _, verb := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		b.ReportMetric(float64(kubeWrites["azureassignedidentities/"+verb]), "kube-writes-aai-"+verb)
	}
	b.ReportMetric(float64(kubeWrites["events"]), "kube-writes-events")
	b.ReportMetric(float64(kubeWrites["configmaps"]), "kube-writes-configmaps")
	b.ReportMetric(apiserverTime.Seconds(), "s-apiserver-aai-writes")
	patch := timing.VMSSOperation.Duration
	b.ReportMetric((elapsed-created).Seconds()/(1.2*patch.Seconds()+apiserverTime.Seconds()), "tail-vs-goal")
	if binary {
		b.ReportMetric(float64(rssOf(b, fmt.Sprintf("/proc/%d/status", micp.pid))), "mic-RSS-MiB")
		b.ReportMetric(micp.gauge(b, "go_memstats_heap_inuse_bytes")/(1<<20), "mic-heap-inuse-MiB")
		b.ReportMetric(micp.gauge(b, "go_memstats_sys_bytes")/(1<<20), "mic-go-sys-MiB")
	} else {
		b.ReportMetric(float64(rssMiB()), "process-RSS-MiB")
	}
	// Quiet period: no ARM call without changes (reconcile interval is 3 min).
	quiet := 5 * time.Second
	if *fullShape {
		quiet = 2 * time.Minute
	}
	if *quietFor > 0 {
		quiet = *quietFor
	}
	before := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM})
	time.Sleep(quiet)
	b.ReportMetric(float64(w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM})-before), "arm-calls-quiet")
}

// apiserverWrites reads the apiserver's own request counter for mutating verbs, by resource and
// by "resource/verb".
func apiserverWrites() map[string]int64 {
	total := map[string]int64{}
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return total
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		return total
	}
	resource := regexp.MustCompile(`[{,]resource="([^"]*)"`)
	verb := regexp.MustCompile(`[{,]verb="([^"]*)"`)
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		if !(strings.Contains(line, `verb="POST"`) || strings.Contains(line, `verb="PUT"`) || strings.Contains(line, `verb="PATCH"`) || strings.Contains(line, `verb="DELETE"`)) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		if m := resource.FindStringSubmatch(line); m != nil {
			total[m[1]] += int64(v)
			if vm := verb.FindStringSubmatch(line); vm != nil {
				total[m[1]+"/"+vm[1]] += int64(v)
			}
		}
	}
	return total
}

// timeWrites measures how long the apiserver takes to create n AAIs like MIC's (embedded
// identity and binding copies) at the concurrency MIC uses, with nothing else running. It runs
// before MIC starts and deletes them again, so MIC never sees them.
func timeWrites(b *testing.B, w *world, n int) time.Duration {
	ctx := testenv.Context(b)
	id := testenv.NewMSIIdentity(w.ns, "baseline", w.sub, w.rg, "00000000-0000-0000-0000-0000000000b1")
	id.APIVersion, id.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentity"
	bd := testenv.NewBinding(w.ns, "baseline", "baseline", "baseline")
	bd.APIVersion, bd.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentityBinding"
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(50)
	start := time.Now()
	for i := 0; i < n; i++ {
		g.Go(func() error {
			return w.cl.Create(gctx, &aadv1.AzureAssignedIdentity{
				ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: fmt.Sprintf("baseline-%d", i),
					Labels: map[string]string{aadv1.AssignedIdentityNodeLabel: "baseline"}},
				Spec: aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: id, AzureBindingRef: bd,
					Pod: fmt.Sprintf("baseline-%d", i), PodNamespace: "baseline", NodeName: "baseline"},
				Status: aadv1.AzureAssignedIdentityStatus{Status: aadv1.AssignedIDAssigned, AvailableReplicas: 1},
			})
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("timing apiserver writes: %v", err)
	}
	took := time.Since(start)
	if err := w.cl.DeleteAllOf(ctx, &aadv1.AzureAssignedIdentity{}, client.InNamespace(w.ns)); err != nil {
		b.Fatalf("deleting the timing AAIs: %v", err)
	}
	return took
}

// assignedWatch follows AAIs with a watch (polling full lists would load the apiserver the
// benchmark measures) and counts those of this world that are Assigned.
type assignedWatch struct {
	mu       sync.Mutex
	assigned map[string]bool
	changed  chan struct{}
}

func watchAssigned(b *testing.B, w *world) *assignedWatch {
	ctx := testenv.Context(b)
	wc, err := client.NewWithWatch(w.rest, client.Options{Scheme: w.cl.Scheme()})
	if err != nil {
		b.Fatalf("watch client: %v", err)
	}
	aw := &assignedWatch{assigned: map[string]bool{}, changed: make(chan struct{}, 1)}
	go func() {
		for ctx.Err() == nil {
			wi, err := wc.Watch(ctx, &aadv1.AzureAssignedIdentityList{})
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for ev := range wi.ResultChan() {
				a, ok := ev.Object.(*aadv1.AzureAssignedIdentity)
				if !ok || a.Spec.PodNamespace != w.ns {
					continue
				}
				aw.mu.Lock()
				aw.assigned[a.Name] = ev.Type != watch.Deleted && a.Status.Status == aadv1.AssignedIDAssigned
				aw.mu.Unlock()
				select {
				case aw.changed <- struct{}{}:
				default:
				}
			}
		}
	}()
	return aw
}

// wait blocks until n AAIs are Assigned.
func (aw *assignedWatch) wait(b *testing.B, n int) {
	ctx := testenv.Context(b)
	for {
		aw.mu.Lock()
		got := 0
		for _, ok := range aw.assigned {
			if ok {
				got++
			}
		}
		aw.mu.Unlock()
		if got == n {
			return
		}
		select {
		case <-aw.changed:
		case <-ctx.Done():
			b.Fatalf("%d of %d AAIs Assigned when the benchmark ran out of time", got, n)
		}
	}
}

// profileAPIServer writes a CPU profile of the apiserver (its /debug/pprof is on by default).
func profileAPIServer(b *testing.B, file string, d time.Duration) {
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		b.Logf("profiling the apiserver: %v", err)
		return
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", fmt.Sprint(int(d.Seconds()))).
		Timeout(d + 30*time.Second).DoRaw(context.Background())
	if err == nil {
		err = os.WriteFile(file, raw, 0o644)
	}
	if err != nil {
		b.Logf("profiling the apiserver: %v", err)
	}
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
