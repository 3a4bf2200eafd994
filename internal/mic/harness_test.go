package mic_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/azureconfig"
	"github.com/podidentity/podidentity/internal/cloud/armcloud"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/mic"
	"github.com/podidentity/podidentity/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

const micAppID = "11111111-2222-3333-4444-555555555555"

// world is one test's emulated Azure plus its namespace.
type world struct {
	t   testing.TB
	e   *emulator.Emulator
	ns  string
	sub string
	rg  string
	dir string
	// rest and cl reach the control plane this world's objects live in: the package's shared one,
	// or a dedicated one (newWorldOn) for tests that restart it.
	rest      *rest.Config
	cl        client.Client
	dedicated bool
}

func newWorld(t *testing.T, cfg emulator.Config) *world { return newWorldTB(t, cfg) }

func newWorldTB(t testing.TB, cfg emulator.Config) *world {
	t.Helper()
	w := newEmulated(t, cfg)
	w.ns, w.rest, w.cl = env.Namespace(t), env.Config, env.Client
	return w
}

// newWorldOn is newWorld on a dedicated control plane reached through rc/cl, in namespace ns
// (which must exist).
func newWorldOn(t testing.TB, cfg emulator.Config, rc *rest.Config, cl client.Client, ns string) *world {
	t.Helper()
	w := newEmulated(t, cfg)
	w.ns, w.rest, w.cl, w.dedicated = ns, rc, cl, true
	return w
}

func newEmulated(t testing.TB, cfg emulator.Config) *world {
	t.Helper()
	cfg.ServicePrincipals = append(cfg.ServicePrincipals, emulator.PrincipalConfig{AppID: micAppID, Secrets: []string{"secret"},
		DeniedIdentities: deniedOf(cfg)})
	if cfg.Timing == (emulator.Timing{}) {
		cfg.Timing = emulator.FastTiming()
	}
	e, err := emulator.New(cfg)
	if err != nil {
		t.Fatalf("emulator: %v", err)
	}
	if err := e.Start(); err != nil {
		t.Fatalf("starting emulator: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return &world{t: t, e: e, sub: e.Config().SubscriptionID, rg: e.Config().ResourceGroup, dir: t.TempDir()}
}

// denied is a marker name: identities whose name starts with it are denied to MIC's principal.
const denied = "denied-"

func deniedOf(cfg emulator.Config) []string {
	var out []string
	for _, id := range cfg.UserAssignedIdentities {
		if strings.HasPrefix(id.Name, denied) {
			out = append(out, id.Name)
		}
	}
	return out
}

// settings writes the custom-cloud environment file and CA as an operator would, and loads them
// through azureconfig exactly as cmd/mic does.
func (w *world) settings(extra map[string]string) *azureconfig.Settings {
	w.t.Helper()
	ca := filepath.Join(w.dir, "ca.pem")
	if err := w.e.WriteCA(ca); err != nil {
		w.t.Fatal(err)
	}
	envFile := filepath.Join(w.dir, "cloud.json")
	b, _ := json.Marshal(map[string]string{"name": "AzureStackCloud", "resourceManagerEndpoint": w.e.ARMURL() + "/",
		"activeDirectoryEndpoint": w.e.AADURL() + "/", "tokenAudience": emulator.ARMAudience, "caBundle": ca})
	if err := os.WriteFile(envFile, b, 0o600); err != nil {
		w.t.Fatal(err)
	}
	azjson := filepath.Join(w.dir, "azure.json")
	cfg := map[string]string{"cloud": "AzureStackCloud", "tenantId": w.e.Config().TenantID, "aadClientId": micAppID,
		"aadClientSecret": "secret", "subscriptionId": w.sub, "resourceGroup": w.rg, "vmType": "vmss"}
	for k, v := range extra {
		cfg[k] = v
	}
	b, _ = json.Marshal(cfg)
	if err := os.WriteFile(azjson, b, 0o600); err != nil {
		w.t.Fatal(err)
	}
	s, err := azureconfig.Load(azjson, func(k string) string {
		if k == azureconfig.EnvironmentFileVar {
			return envFile
		}
		return ""
	})
	if err != nil {
		w.t.Fatalf("loading settings: %v", err)
	}
	return s
}

// micProc is one running MIC replica.
type micProc struct {
	cancel context.CancelFunc
	done   chan error
	ctl    *mic.Controller
	mu     sync.Mutex
}

type micOpts struct {
	opts     func(*mic.Options)
	azure    map[string]string
	lease    time.Duration
	leaseID  string
	noLeader bool
	// probeAddr serves /healthz and /readyz; empty turns them off.
	probeAddr string
	// metricsAddr serves /metrics; empty turns it off. The metrics then go to controller-runtime's
	// registry (shared by every MIC of this process that serves them), as in cmd/mic.
	metricsAddr string
}

// startMIC runs MIC's real code path (settings → armcloud → mic.Run with leader election).
func (w *world) startMIC(mo micOpts) *micProc {
	w.t.Helper()
	s := w.settings(mo.azure)
	// As in cmd/mic: ARM calls are observed by MIC's metrics, which are served (and so
	// registered with controller-runtime's registry) only when asked for.
	var m *mic.Metrics
	if mo.metricsAddr == "" {
		m = mic.NewMetrics(nil)
	} else {
		m = mic.NewMetrics(crmetrics.Registry)
	}
	compute, err := armcloud.New(s, armcloud.Options{PollInterval: 50 * time.Millisecond, Observe: m.ObserveARM})
	if err != nil {
		w.t.Fatal(err)
	}
	o := mic.DefaultOptions()
	o.Namespace, o.Defaults = w.ns, cloudDefaults(w)
	o.BatchIdle, o.BatchMax = 50*time.Millisecond, 300*time.Millisecond
	o.QuarantineBase, o.QuarantineMax = time.Minute, 5*time.Minute
	o.RetryBase, o.RetryMax = 100*time.Millisecond, 2*time.Second
	if s.Config.UserAssignedIdentityID != "" {
		o.ImmutableClientIDs = append(o.ImmutableClientIDs, s.Config.UserAssignedIdentityID)
	}
	if mo.opts != nil {
		mo.opts(&o)
	}
	lease := mo.lease
	if lease == 0 {
		lease = 2 * time.Second
	}
	leaseID := mo.leaseID
	if leaseID == "" {
		leaseID = "mic"
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &micProc{cancel: cancel, done: make(chan error, 1)}
	go func() {
		p.done <- mic.Run(ctx, mic.RunConfig{Rest: w.rest, Compute: compute, Options: o, Log: testr.NewWithInterface(w.t, testr.Options{Verbosity: 0}),
			LeaderElection: !mo.noLeader, LeaseName: leaseID, LeaseNamespace: w.ns, LeaseDuration: lease,
			ProbeAddr: cmpOr(mo.probeAddr, "0"), MetricsAddr: cmpOr(mo.metricsAddr, "0"), Metrics: m,
			OnController: func(c *mic.Controller) { p.mu.Lock(); p.ctl = c; p.mu.Unlock() }})
	}()
	w.t.Cleanup(p.stop)
	return p
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (p *micProc) controller() *mic.Controller {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ctl
}

// exited reports whether Run returned, and with what, without consuming the result (stop still
// works afterwards).
func (p *micProc) exited() (bool, error) {
	select {
	case err := <-p.done:
		p.done <- err
		return true, err
	default:
		return false, nil
	}
}

func (p *micProc) stop() {
	p.cancel()
	<-p.done
	p.done <- nil // later stops return at once
}

// --- objects ---------------------------------------------------------------------------------

func (w *world) identity(name string) *aadv1.AzureIdentity {
	w.t.Helper()
	info, err := w.e.Identity(name)
	if err != nil {
		w.t.Fatalf("emulator identity %s: %v", name, err)
	}
	id := testenv.NewMSIIdentity(w.ns, name, w.sub, w.rg, info.ClientID)
	id.Spec.ResourceID = info.ID
	w.create(id)
	return id
}

func (w *world) binding(name, identity, selector string) *aadv1.AzureIdentityBinding {
	b := testenv.NewBinding(w.ns, name, identity, w.sel(selector))
	w.create(b)
	return b
}

func (w *world) vmssNode(vmss string, i int) string {
	name := fmt.Sprintf("%s-%s-%d", w.ns, vmss, i)
	w.node(name, testenv.VMSSProviderID(w.sub, w.rg, vmss, i))
	return name
}

func (w *world) vmNode(vm string) string {
	name := w.ns + "-" + vm
	w.node(name, testenv.VMProviderID(w.sub, w.rg, vm))
	return name
}

func (w *world) pod(name, node, selector string) *corev1.Pod {
	if !w.dedicated {
		return env.CreatePod(w.t, testenv.PodSpec{Namespace: w.ns, Name: name, Node: node, Binding: w.sel(selector)})
	}
	// A scheduled, running pod as the scheduler and kubelet would leave it (neither runs here).
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name, Labels: map[string]string{aadv1.PodLabelKey: w.sel(selector)}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	w.create(p)
	p.Status.Phase = corev1.PodRunning
	if err := w.cl.Status().Update(testenv.Context(w.t), p); err != nil {
		w.t.Fatalf("marking pod %s running: %v", name, err)
	}
	return p
}

func (w *world) node(name, providerID string) {
	w.t.Helper()
	if !w.dedicated {
		env.CreateNode(w.t, name, providerID)
		return
	}
	w.create(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{ProviderID: providerID}})
}

func (w *world) create(obj client.Object) {
	w.t.Helper()
	if !w.dedicated {
		env.Create(w.t, obj)
		return
	}
	if err := w.cl.Create(testenv.Context(w.t), obj); err != nil {
		w.t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

// sel makes a selector unique to the test: bindings match pods across namespaces, and earlier
// tests' objects stay in the shared control plane.
func (w *world) sel(s string) string { return w.ns + "-" + s }

func (w *world) deletePod(name string) {
	w.t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name}}
	if err := w.cl.Delete(testenv.Context(w.t), p, client.GracePeriodSeconds(0)); err != nil {
		w.t.Fatalf("deleting pod %s: %v", name, err)
	}
}

func (w *world) delete(obj client.Object) {
	w.t.Helper()
	if err := w.cl.Delete(testenv.Context(w.t), obj); err != nil {
		w.t.Fatalf("deleting %T %s: %v", obj, obj.GetName(), err)
	}
}

// aais returns this test's AzureAssignedIdentities (all namespaces), by name → status.
func (w *world) aais() map[string]aadv1.AssignedIdentityState {
	w.t.Helper()
	var l aadv1.AzureAssignedIdentityList
	if err := w.cl.List(testenv.Context(w.t), &l); err != nil {
		w.t.Fatalf("listing AzureAssignedIdentities: %v", err)
	}
	out := map[string]aadv1.AssignedIdentityState{}
	for _, a := range l.Items {
		if a.Spec.PodNamespace == w.ns {
			out[a.Name] = a.Status.Status
		}
	}
	return out
}

func (w *world) aaiName(pod, identity string) string { return pod + "-" + w.ns + "-" + identity }

// assigned returns the lower-cased identity names on a VM/VMSS.
func (w *world) assigned(resource string) []string {
	w.t.Helper()
	ids, err := w.e.AssignedIdentities(resource)
	if err != nil {
		w.t.Fatalf("emulator assignments of %s: %v", resource, err)
	}
	var out []string
	for _, id := range ids {
		out = append(out, strings.ToLower(id[strings.LastIndex(id, "/")+1:]))
	}
	slices.Sort(out)
	return out
}

// eventually polls cond until it holds; the deadline is generous and only catches hangs (no
// timing is asserted).
func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never happened; last state: %s", what, last)
}

func (w *world) waitAAIs(want map[string]aadv1.AssignedIdentityState) {
	w.t.Helper()
	eventually(w.t, fmt.Sprintf("AzureAssignedIdentities %v", want), func() (bool, string) {
		got := w.aais()
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprint(got)
	})
}

func (w *world) waitAssigned(resource string, want ...string) {
	w.t.Helper()
	slices.Sort(want)
	if want == nil {
		want = []string{}
	}
	eventually(w.t, fmt.Sprintf("identities %v on %s", want, resource), func() (bool, string) {
		got := w.assigned(resource)
		if got == nil {
			got = []string{}
		}
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprint(got)
	})
}

// eventWant identifies an event: the kind and name of the object it regards, type and reason.
type eventWant struct{ kind, name, typ, reason string }

// waitEvents waits until, for each wanted event, one exists in the world's namespace whose note
// contains all the given words.
func (w *world) waitEvents(wants map[eventWant][]string) {
	w.t.Helper()
	eventually(w.t, "events", func() (bool, string) {
		var l eventsv1.EventList
		if err := w.cl.List(testenv.Context(w.t), &l, client.InNamespace(w.ns)); err != nil {
			return false, err.Error()
		}
		var missing []string
		for k, words := range wants {
			found := slices.ContainsFunc(l.Items, func(e eventsv1.Event) bool {
				if e.Regarding.Kind != k.kind || e.Regarding.Name != k.name || e.Type != k.typ || e.Reason != k.reason {
					return false
				}
				for _, s := range words {
					if !strings.Contains(e.Note, s) {
						return false
					}
				}
				return true
			})
			if !found {
				missing = append(missing, fmt.Sprintf("%v %q", k, words))
			}
		}
		var seen []string
		for _, e := range l.Items {
			seen = append(seen, fmt.Sprintf("%s/%s %s %s: %s", e.Regarding.Kind, e.Regarding.Name, e.Type, e.Reason, e.Note))
		}
		return len(missing) == 0, "missing " + strings.Join(missing, "; ") + "\nseen:\n" + strings.Join(seen, "\n")
	})
}
