package mic_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/testenv"
)

// chartLease is the Lease the chart's leader-election Role names by default (and cmd/mic's
// --leader-election-name default).
const chartLease = "aad-pod-identity-mic"

// Every other test runs MIC as cluster admin, so a read the chart does not allow (a cluster-wide
// ConfigMap informer, say) goes unnoticed there and blocks MIC on a real cluster. Here MIC runs as
// the chart's ServiceAccount with only the chart's RBAC, and must do a whole assign/release cycle
// without a single request being refused.
func TestMICWorksUnderTheChartsRBAC(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "web"}},
	})
	sa := applyChartMICRBAC(t, w.ns)
	refused := &refusals{}
	w.rest = asServiceAccount(env.Config, w.ns, sa, refused)
	waitForGrants(t, w.rest, w.ns)

	p := w.startMIC(micOpts{leaseID: chartLease})
	w.identity("web")
	w.binding("web-binding", "web", "web-sel")
	n := w.vmssNode("pool", 0)
	w.pod("web-1", n, "web-sel")

	aai := w.aaiName("web-1", "web")
	waitUnderRBAC(t, p, refused, "the AzureAssignedIdentity "+aai+" Assigned and the ownership record written", func() (bool, string) {
		got := w.aais()
		rec, err := ownershipRecords(t, w.ns)
		if err != nil {
			return false, err.Error()
		}
		webID := strings.ToLower(mustIdentity(t, w, "web"))
		ok := got[aai] == assigned && len(rec) == 1 && strings.Contains(strings.ToLower(rec[0].Data["identities"]), webID) &&
			slices.Equal(w.assigned("pool"), []string{"web"})
		return ok, fmt.Sprintf("AAIs %v, ownership ConfigMaps %v, on the scale set %v", got, rec, w.assigned("pool"))
	})

	// Releasing: the finalizer is removed, the AAI deleted, the record updated, the identity gone.
	w.deletePod("web-1")
	waitUnderRBAC(t, p, refused, "the identity released and the AzureAssignedIdentity deleted", func() (bool, string) {
		got := w.aais()
		rec, err := ownershipRecords(t, w.ns)
		if err != nil {
			return false, err.Error()
		}
		ok := len(got) == 0 && len(w.assigned("pool")) == 0 && len(rec) == 1 && rec[0].Data["identities"] == "{}"
		return ok, fmt.Sprintf("AAIs %v, ownership ConfigMaps %v, on the scale set %v", got, rec, w.assigned("pool"))
	})
	if r := refused.list(); len(r) > 0 {
		t.Fatalf("MIC's requests refused under the chart's RBAC (the chart must grant them or MIC must not make them):\n%s", strings.Join(r, "\n"))
	}
}

// applyChartMICRBAC renders the chart with its default values (release and namespace ns), creates
// MIC's ServiceAccount and RBAC from it and returns the ServiceAccount the MIC Deployment runs as.
func applyChartMICRBAC(t *testing.T, ns string) string {
	t.Helper()
	ch, err := chartrender.Load()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := chartrender.Render(ch, chartrender.Options{ReleaseName: ns, Namespace: ns, Values: map[string]any{}})
	if err != nil {
		t.Fatalf("rendering the chart: %v", err)
	}
	sa, applied := "", 0
	for _, o := range objs {
		if o.Kind == "Deployment" && strings.HasSuffix(o.Source, "/mic-deployment.yaml") {
			var d appsv1.Deployment
			if err := yaml.Unmarshal([]byte(o.YAML), &d); err != nil {
				t.Fatalf("%s: %v", o.Source, err)
			}
			sa = d.Spec.Template.Spec.ServiceAccountName
		}
		if !strings.HasSuffix(o.Source, "/mic-rbac.yaml") {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(o.YAML), &u.Object); err != nil {
			t.Fatalf("%s %s (%s): %v", o.Kind, o.Name, o.Source, err)
		}
		if err := env.Client.Create(testenv.Context(t), u); err != nil {
			t.Fatalf("creating %s %s/%s from %s: %v", o.Kind, o.Namespace, o.Name, o.Source, err)
		}
		applied++
	}
	if sa == "" || applied == 0 {
		t.Fatalf("the chart rendered no MIC Deployment with a ServiceAccount (%q) or no MIC RBAC (%d objects)", sa, applied)
	}
	return sa
}

// asServiceAccount is cfg impersonating the ServiceAccount (with the groups its token would carry),
// recording every request the apiserver refuses.
func asServiceAccount(cfg *rest.Config, ns, sa string, r *refusals) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &recordRefusals{rt: rt, r: r} })
	return c
}

type refusals struct {
	mu   sync.Mutex
	seen []string
}

func (r *refusals) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.seen, s) {
		r.seen = append(r.seen, s)
	}
}

func (r *refusals) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

type recordRefusals struct {
	rt http.RoundTripper
	r  *refusals
}

func (x *recordRefusals) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := x.rt.RoundTrip(req)
	if err == nil && (resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized) {
		x.r.add(fmt.Sprintf("%d %s %s", resp.StatusCode, req.Method, req.URL.RequestURI()))
	}
	return resp, err
}

// waitForGrants waits until the apiserver's RBAC authorizer (fed by an informer) sees each of the
// chart's bindings, so that a refusal later is the chart's rule and not that lag.
func waitForGrants(t *testing.T, cfg *rest.Config, ns string) {
	t.Helper()
	c, err := client.New(rest.CopyConfig(cfg), client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testenv.Context(t)
	probes := map[string]func() error{
		"list AzureAssignedIdentities (ClusterRoleBinding)": func() error {
			return c.List(ctx, &aadv1.AzureAssignedIdentityList{}, client.Limit(1))
		},
		"get a ConfigMap in " + ns + " (RoleBinding)": func() error {
			return c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "absent"}, &corev1.ConfigMap{})
		},
		"get the Lease " + chartLease + " (leader-election RoleBinding)": func() error {
			return c.Get(ctx, client.ObjectKey{Namespace: ns, Name: chartLease}, &coordinationv1.Lease{})
		},
	}
	deadline := time.Now().Add(30 * time.Second)
	for what, probe := range probes {
		for {
			err := probe()
			if err == nil || apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the chart's RBAC never allowed MIC's ServiceAccount to %s: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// waitUnderRBAC polls cond for at most 60 s; on timeout it reports the state, the refused requests
// and whether MIC exited, which together say why MIC got stuck.
func waitUnderRBAC(t *testing.T, p *micProc, r *refusals, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	state := ""
	for time.Now().Before(deadline) {
		var ok bool
		if ok, state = cond(); ok {
			return
		}
		if done, err := p.exited(); done {
			t.Fatalf("MIC exited under the chart's RBAC before %s: %v; refused requests: %v", what, err, r.list())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("MIC running as its ServiceAccount with only the chart's RBAC never got %s within 60s.\nlast state: %s\n"+
		"requests the apiserver refused (a cluster-wide list/watch here means MIC reads through a cache the chart's namespaced Role does not cover):\n%s",
		what, state, strings.Join(r.list(), "\n"))
}

// ownershipRecords returns MIC's ownership ConfigMaps in ns (read as admin).
func ownershipRecords(t *testing.T, ns string) ([]corev1.ConfigMap, error) {
	var l corev1.ConfigMapList
	if err := env.Client.List(testenv.Context(t), &l, client.InNamespace(ns), client.MatchingLabels{"podidentity.io/mic-ownership": "true"}); err != nil {
		return nil, fmt.Errorf("listing ownership ConfigMaps: %w", err)
	}
	return l.Items, nil
}

func mustIdentity(t *testing.T, w *world, name string) string {
	info, err := w.e.Identity(name)
	if err != nil {
		t.Fatalf("emulator identity %s: %v", name, err)
	}
	return info.ID
}
