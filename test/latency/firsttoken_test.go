// Package latency measures how long a new pod waits for its first token, standard mode against
// federated mode, in a sandbox with Azure's documented timing (a VMSS PATCH takes ~50 s). It has
// benchmarks only (make bench-firsttoken); `go test` without -bench runs nothing here.
package latency

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// podsPerMode is how many pods each mode starts at once (LATENCY_PODS overrides).
const podsPerMode = 8

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BenchmarkFirstToken starts podsPerMode pods bound to a standard identity and as many bound to
// a federated one, at the same moment, on the scale set's nodes, and reports each mode's time
// from the pod's first IMDS request to its first token (p50, p99, max), the ratio of the p99s,
// ARM writes, and the Azure AD exchanges and TokenRequests per federated pod. One iteration is
// one sandbox run (about two minutes with realistic timing); use -benchtime 1x.
func BenchmarkFirstToken(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("the sandbox needs root (network namespaces): run as root, e.g. sudo make bench-firsttoken")
	}
	n := podsPerMode
	if v := os.Getenv("LATENCY_PODS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("LATENCY_PODS=%q: want a positive number of pods per mode", v)
		}
	}
	profile := os.Getenv("LATENCY_TIMING")
	if profile == "" {
		profile = sandbox.TimingRealistic
	}
	for i := 0; i < b.N; i++ {
		r := runOnce(b, profile, n)
		b.ReportMetric(r.std.p(0.5), "standard-p50-s")
		b.ReportMetric(r.std.p(0.99), "standard-p99-s")
		b.ReportMetric(r.fed.p(0.5), "federated-p50-s")
		b.ReportMetric(r.fed.p(0.99), "federated-p99-s")
		b.ReportMetric(r.fed.p(1), "federated-max-s")
		b.ReportMetric(r.std.p(0.99)/r.fed.p(0.99), "p99-ratio")
		b.ReportMetric(float64(r.armWrites), "arm-writes")
		b.ReportMetric(float64(r.exchanges)/float64(n), "exchanges/fedpod")
		b.ReportMetric(float64(r.tokenRequests)/float64(n), "tokenrequests/fedpod")
		b.Logf("%s timing, %d pods per mode: standard first token p50 %.2fs p99 %.2fs max %.2fs; federated p50 %.3fs p99 %.3fs max %.3fs; ARM writes %d; Azure AD exchanges %d, TokenRequests %d for %d federated pods",
			profile, n, r.std.p(0.5), r.std.p(0.99), r.std.p(1), r.fed.p(0.5), r.fed.p(0.99), r.fed.p(1), r.armWrites, r.exchanges, r.tokenRequests, n)
	}
}

type seconds []float64

// p is the q-quantile (nearest rank) of the sorted values.
func (s seconds) p(q float64) float64 {
	if len(s) == 0 {
		return 0
	}
	i := int(q*float64(len(s))+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return s[i]
}

type runResult struct {
	std, fed                            seconds
	armWrites, exchanges, tokenRequests int64
}

func runOnce(b *testing.B, profile string, n int) runResult {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	sb, err := sandbox.Start(ctx, sandbox.Options{
		Timing: profile, RepoRoot: repoRoot(), TempRoot: os.TempDir(), MICReplicas: 1, NMI: true,
		// Azure AD answers in about 150 ms, as from an AKS region.
		World:          func(c *emulator.Config) { c.Timing.AADLatency = emulator.D(150 * time.Millisecond) },
		ProbeArgs:      []string{"--retries=10", "--retry-delay=1s", "--retry-max-delay=5s", "--request-timeout=150s"},
		RestartBackoff: time.Second, StartTimeout: 3 * time.Minute, Out: os.Stderr,
	})
	if err != nil {
		b.Fatalf("starting the sandbox: %v", err)
	}
	defer func() {
		if err := sb.Close(); err != nil {
			b.Errorf("stopping the sandbox left something behind: %v", err)
		}
	}()
	var nodes []string
	for _, nd := range sb.Nodes {
		if !nd.Extra && strings.Contains(strings.ToLower(nd.HostKey), strings.ToLower(sandbox.ScaleSet)) {
			nodes = append(nodes, nd.Name)
		}
	}
	if len(nodes) == 0 {
		b.Fatal("the sandbox has no node on its scale set")
	}
	const ns = "latency"
	kc := sb.Client
	crc, err := sb.CRClient()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	for _, sa := range []string{"std", "fed"} {
		if _, err := kc.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	std, err := sb.Emulator.CreateIdentity(emulator.IdentityConfig{Name: "latency-std"})
	if err != nil {
		b.Fatal(err)
	}
	fed, err := sb.Emulator.CreateIdentity(emulator.IdentityConfig{Name: "latency-fed"})
	if err != nil {
		b.Fatal(err)
	}
	if err := sb.Emulator.AddFederatedCredential(fed.Name, emulator.FederatedCredentialConfig{
		Name: "latency", Issuer: sb.Issuer, Subject: sandbox.FederatedSubject(ns, "fed")}); err != nil {
		b.Fatal(err)
	}
	objs := []*aadv1.AzureIdentity{
		{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "std"}, Spec: aadv1.AzureIdentitySpec{ResourceID: std.ID, ClientID: std.ClientID}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fed"}, Spec: aadv1.AzureIdentitySpec{ResourceID: fed.ID, ClientID: fed.ClientID,
			TenantID: fed.TenantID, Federation: &aadv1.Federation{}}},
	}
	for _, id := range objs {
		if err := crc.Create(ctx, id); err != nil {
			b.Fatal(err)
		}
		bd := &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: id.Name},
			Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: id.Name, ServiceAccountName: id.Name}}
		if err := crc.Create(ctx, bd); err != nil {
			b.Fatal(err)
		}
	}
	// Let the watches see the objects before the clock starts: the pods are what is measured.
	time.Sleep(2 * time.Second)
	armBefore := armWrites(sb)
	trBefore := tokenRequests(b, sb)
	b.ResetTimer()
	for i := 0; i < n; i++ {
		for _, sa := range []string{"std", "fed"} {
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", sa, i)},
				Spec: corev1.PodSpec{NodeName: nodes[i%len(nodes)], ServiceAccountName: sa, RestartPolicy: corev1.RestartPolicyNever,
					TerminationGracePeriodSeconds: ptr.To(int64(1)),
					Containers:                    []corev1.Container{{Name: "app", Image: "mcr.microsoft.com/azure-cli", Command: []string{"az", "login", "--identity"}}}},
			}
			if _, err := kc.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	}
	got := map[string]float64{}
	for len(got) < 2*n {
		all, next := sb.Results()
		for _, r := range all {
			if r.Namespace != ns || r.Result.Kind != "token" {
				continue
			}
			if _, seen := got[r.Pod]; seen {
				continue
			}
			if !r.Result.OK {
				b.Fatalf("pod %s got no token: %s", r.Pod, r.Result.Summary())
			}
			got[r.Pod] = float64(r.Result.ElapsedMS) / 1000
		}
		if len(got) == 2*n {
			break
		}
		select {
		case <-next:
		case <-ctx.Done():
			b.Fatalf("only %d of %d pods got a token before the deadline", len(got), 2*n)
		}
	}
	b.StopTimer()
	var out runResult
	for pod, s := range got {
		if strings.HasPrefix(pod, "fed-") {
			out.fed = append(out.fed, s)
		} else {
			out.std = append(out.std, s)
		}
	}
	sort.Float64s(out.std)
	sort.Float64s(out.fed)
	out.armWrites = armWrites(sb) - armBefore
	out.exchanges = sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken,
		Identity: fed.ClientID, Subject: sandbox.FederatedSubject(ns, "fed"), Status: http.StatusOK})
	out.tokenRequests = tokenRequests(b, sb) - trBefore
	return out
}

// armWrites counts PATCHes of VMs and scale sets, answered or not.
func armWrites(sb *sandbox.Sandbox) int64 {
	return sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMUpdate}) +
		sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate})
}

// tokenRequests is the apiserver's count of TokenRequests (POST serviceaccounts/token), read
// from its own metrics, so what NMI asked for is counted by the server that answered.
func tokenRequests(b *testing.B, sb *sandbox.Sandbox) int64 {
	raw, err := sb.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatalf("reading the apiserver's metrics: %v", err)
	}
	var n int64
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="serviceaccounts"`) ||
			!strings.Contains(line, `subresource="token"`) || !strings.Contains(line, `verb="POST"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			b.Fatalf("apiserver metric line %q: %v", line, err)
		}
		n += int64(v)
	}
	return n
}
