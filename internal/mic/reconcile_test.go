package mic

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/cloud/fakecloud"
	"github.com/podidentity/podidentity/internal/kubescheme"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// The per-VM/VMSS reconcile against an in-memory ARM (fakecloud) and an in-memory Kubernetes
// client: no apiserver, so these run in milliseconds. The same behaviour is tested end to end
// against the real apiserver and the emulator in scenarios_test.go.

const ns = "default"

var pool = cloud.Resource{Kind: cloud.KindVMSS, SubscriptionID: "sub", ResourceGroup: "rg", Name: "pool"}

func idID(name string) string {
	return "/subscriptions/sub/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/" + name
}

func clientOf(name string) string { return "c-" + name }

// fixture is one VM/VMSS with pods on it, a Controller wired to fakes, and the world's objects.
type fixture struct {
	t     *testing.T
	az    *fakecloud.Fake
	kube  client.Client
	rec   *events.FakeRecorder
	c     *Controller
	ids   []*aadv1.AzureIdentity
	binds []*aadv1.AzureIdentityBinding
	pods  []desired.Pod
}

func newFixture(t *testing.T, o func(*Options)) *fixture {
	opts := DefaultOptions()
	opts.Namespace = "mic"
	opts.QuarantineBase, opts.QuarantineMax = time.Minute, time.Hour
	if o != nil {
		o(&opts)
	}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, az: fakecloud.New(), kube: fake.NewClientBuilder().WithScheme(kubescheme.New()).Build(), rec: events.NewFakeRecorder(1000)}
	f.c = newController(testr.New(t), nil, f.kube, f.kube, f.az, f.rec, NewMetrics(nil), opts)
	return f
}

// identity adds an identity with a binding selecting label value name.
func (f *fixture) identity(name string, mutate ...func(*aadv1.AzureIdentity)) {
	id := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: idID(name), ClientID: clientOf(name)}}
	for _, m := range mutate {
		m(id)
	}
	f.ids = append(f.ids, id)
	f.binds = append(f.binds, &aadv1.AzureIdentityBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "b-" + name, ResourceVersion: "1"},
		Spec: aadv1.AzureIdentityBindingSpec{AzureIdentity: name, Selector: name}})
	f.az.SetClientID(idID(name), clientOf(name))
}

func (f *fixture) pod(name, selector string) {
	f.pods = append(f.pods, desired.Pod{Namespace: ns, Name: name, Selector: selector, NodeName: "n0"})
}

// reconcile plans from the fixture's objects and the AAIs in the fake client, then reconciles
// pool once, as a worker does after a pass.
func (f *fixture) reconcile() time.Duration {
	f.t.Helper()
	ctx := context.Background()
	st := desired.Compute(desired.Input{Pods: f.pods, Bindings: f.binds, Identities: f.ids,
		Nodes: map[string]desired.Node{"n0": {Name: "n0", Resource: pool}}, Options: desired.Options{SkipFederated: f.c.o.SkipFederatedAssignments}})
	var l aadv1.AzureAssignedIdentityList
	if err := f.kube.List(ctx, &l); err != nil {
		f.t.Fatal(err)
	}
	cached := make([]*aadv1.AzureAssignedIdentity, len(l.Items))
	for i := range l.Items {
		cached[i] = &l.Items[i]
	}
	f.c.ov.prune(cached)
	f.c.snap.Store(newSnapshot(st, map[string]desired.Node{"n0": {Name: "n0", Resource: pool}}, map[types.NamespacedName]types.UID{}, cached))
	after, err := f.c.process(ctx, pool.Key())
	if err != nil {
		f.t.Logf("process: %v", err)
	}
	return after
}

// states returns the AAIs by name → status.
func (f *fixture) states() map[string]aadv1.AssignedIdentityState {
	var l aadv1.AzureAssignedIdentityList
	if err := f.kube.List(context.Background(), &l); err != nil {
		f.t.Fatal(err)
	}
	out := map[string]aadv1.AssignedIdentityState{}
	for _, a := range l.Items {
		out[a.Name] = a.Status.Status
	}
	return out
}

func (f *fixture) patches() []cloud.Update {
	var out []cloud.Update
	for _, c := range f.az.Calls() {
		if c.Op == fakecloud.OpUpdate && c.Err == nil {
			out = append(out, c.Update)
		}
	}
	return out
}

func (f *fixture) warnings() []string {
	var out []string
	for {
		select {
		case e := <-f.rec.Events:
			if strings.HasPrefix(e, corev1.EventTypeWarning) {
				out = append(out, e)
			}
		default:
			return out
		}
	}
}

func aaiName(pod, identity string) string { return pod + "-" + ns + "-" + identity }

func TestReconcileAddsIdentitiesAndWritesAssignedOnce(t *testing.T) {
	f := newFixture(t, nil)
	f.identity("a")
	f.identity("b")
	f.pod("p1", "a")
	f.pod("p2", "b")
	f.reconcile()
	if got := f.states(); got[aaiName("p1", "a")] != aadv1.AssignedIDAssigned || got[aaiName("p2", "b")] != aadv1.AssignedIDAssigned || len(got) != 2 {
		t.Fatalf("AAIs %v, want both Assigned", got)
	}
	if p := f.patches(); len(p) != 1 || len(p[0].Add) != 2 || len(p[0].Remove) != 0 {
		t.Fatalf("PATCHes %+v, want one adding both", p)
	}
	if n := f.az.Count(fakecloud.OpGet); n != 1 {
		t.Errorf("%d reads, want 1 (before the PATCH)", n)
	}
	// In sync: the next reconcile costs no ARM call.
	f.az.Reset()
	f.reconcile()
	if calls := f.az.Calls(); len(calls) != 0 {
		t.Errorf("steady state made ARM calls %+v", calls)
	}
}

func TestReconcileRemovesOnlyIdentitiesMICAdded(t *testing.T) {
	f := newFixture(t, nil)
	f.identity("a")
	f.pod("p1", "a")
	f.reconcile()
	f.az.Set(pool, idID("a"), idID("theirs"))
	f.pods = nil
	f.az.Reset()
	f.c.known.markAllStale()
	f.reconcile()
	if p := f.patches(); len(p) != 1 || fmt.Sprint(p[0].Remove) != fmt.Sprint([]string{idID("a")}) || len(p[0].Add) != 0 {
		t.Fatalf("PATCHes %+v, want one removing a only", p)
	}
	if got := f.az.Assigned(pool); !got[idID("theirs")] || len(got) != 1 {
		t.Errorf("VMSS has %v, want only theirs", got)
	}
	if got := f.states(); len(got) != 0 {
		t.Errorf("AAIs %v left after the pod went", got)
	}
}

func TestReconcileChunksLargeChanges(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.ChunkSize = 2 })
	for i := range 5 {
		n := fmt.Sprintf("id%d", i)
		f.identity(n)
		f.pod("p"+n, n)
	}
	f.reconcile()
	var sizes []int
	for _, p := range f.patches() {
		sizes = append(sizes, len(p.Add)+len(p.Remove))
	}
	if fmt.Sprint(sizes) != "[2 2 1]" {
		t.Fatalf("PATCH sizes %v, want [2 2 1]", sizes)
	}
	for name, s := range f.states() {
		if s != aadv1.AssignedIDAssigned {
			t.Errorf("%s is %s", name, s)
		}
	}
}

func TestReconcileQuarantinesAnIdentityARMRefusesAndAssignsTheOthers(t *testing.T) {
	f := newFixture(t, nil)
	f.identity("good")
	f.identity("bad")
	f.pod("p1", "good")
	f.pod("p2", "bad")
	f.az.FailNext(fakecloud.OpUpdate, &cloud.Error{Operation: "vmss_update", Resource: pool, StatusCode: 400, Code: "LinkedAuthorizationFailed",
		Message: "no access to " + idID("bad"), Identities: []string{idID("bad")}})
	after := f.reconcile()
	got := f.states()
	if got[aaiName("p1", "good")] != aadv1.AssignedIDAssigned || got[aaiName("p2", "bad")] != aadv1.AssignedIDCreated {
		t.Fatalf("AAIs %v, want good Assigned and bad Created", got)
	}
	if p := f.patches(); len(p) != 1 || fmt.Sprint(p[0].Add) != fmt.Sprint([]string{idID("good")}) {
		t.Fatalf("successful PATCHes %+v, want one adding good at once", p)
	}
	if after < 30*time.Second {
		t.Errorf("requeued after %s, want about the quarantine (1m)", after)
	}
	if w := f.warnings(); len(w) == 0 || !strings.Contains(strings.Join(w, "\n"), "LinkedAuthorizationFailed") {
		t.Errorf("warnings %v, want one naming ARM's refusal", w)
	}
	// Held: the next reconcile does not ask ARM for it again.
	f.az.Reset()
	f.reconcile()
	if p := f.patches(); len(p) != 0 {
		t.Errorf("quarantined identity retried at once: %+v", p)
	}
}

func TestReconcileBacksOffWhenARMFails(t *testing.T) {
	f := newFixture(t, nil)
	f.identity("a")
	f.pod("p1", "a")
	f.az.FailNext(fakecloud.OpUpdate, &cloud.Error{Operation: "vmss_update", Resource: pool, StatusCode: 429, RetryAfter: 30 * time.Second})
	if after := f.reconcile(); after < 20*time.Second {
		t.Errorf("throttled: requeued after %s, want Retry-After", after)
	}
	if got := f.states(); got[aaiName("p1", "a")] != aadv1.AssignedIDCreated {
		t.Errorf("AAIs %v, want Created while throttled", got)
	}
	// The write gate is closed: no PATCH until Retry-After.
	f.az.Reset()
	f.reconcile()
	if p := f.patches(); len(p) != 0 {
		t.Errorf("PATCH sent while throttled: %+v", p)
	}
}

func TestReconcileKeepsAnAAICreatedWhenARMReportsAnotherClientID(t *testing.T) {
	f := newFixture(t, nil)
	f.identity("a", func(id *aadv1.AzureIdentity) { id.Spec.ClientID = clientOf("victim") })
	f.pod("p1", "a")
	f.reconcile()
	if got := f.states(); got[aaiName("p1", "a")] != aadv1.AssignedIDCreated {
		t.Fatalf("AAIs %v, want Created (client ID mismatch)", got)
	}
	if w := strings.Join(f.warnings(), "\n"); !strings.Contains(w, "set spec.clientID to "+clientOf("a")) {
		t.Errorf("warnings %q, want the fix", w)
	}
}

func TestReconcileAssignsFederatedIdentitiesWithoutARM(t *testing.T) {
	f := newFixture(t, nil)
	f.identity("fed", func(id *aadv1.AzureIdentity) { id.Spec.Federation = &aadv1.Federation{}; id.Spec.TenantID = "t" })
	f.identity("std")
	f.pod("p1", "fed")
	f.pod("p2", "std")
	f.reconcile()
	if got := f.states(); got[aaiName("p1", "fed")] != aadv1.AssignedIDAssigned || got[aaiName("p2", "std")] != aadv1.AssignedIDAssigned {
		t.Fatalf("AAIs %v, want both Assigned", got)
	}
	if p := f.patches(); len(p) != 1 || fmt.Sprint(p[0].Add) != fmt.Sprint([]string{idID("std")}) {
		t.Fatalf("PATCHes %+v, want one adding only the standard identity", p)
	}
	owned, err := f.c.own.get(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := owned[idID("fed")]; ok || len(owned) != 1 {
		t.Errorf("ownership record %v, want the standard identity only", owned)
	}
}
